"""CloudWatch calls: the backlog metric."""

from __future__ import annotations

from collections.abc import Mapping

from .transport import AwsTransport


class CloudWatchCalls(AwsTransport):
    async def put_backlog_metric(
        self, namespace: str, metric_name: str, dimensions: Mapping[str, str], value: float, *, unit: str = "Count"
    ) -> None:
        """One PutMetricData call with one datum."""
        datum = {
            "MetricName": metric_name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
            "Value": float(value),
            "Unit": unit,
        }
        await self._call("cloudwatch", "put_metric_data", {"Namespace": namespace, "MetricData": [datum]})
