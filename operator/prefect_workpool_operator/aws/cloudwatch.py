"""CloudWatch calls: the backlog metric, and the alarms of StepScaling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect_workpool_operator.core import aws_scaling
from prefect_workpool_operator.core.queue_backlog import Series
from prefect_workpool_operator.aws.transport import AwsTransport

MAX_DATA_PER_PUT = 1000  # PutMetricData takes at most 1,000 metric data per request
MAX_ALARM_NAMES = 100  # DescribeAlarms: AlarmNames holds at most 100


class CloudWatchCalls(AwsTransport):
    async def put_backlog_metric(
        self, namespace: str, metric_name: str, dimensions: Mapping[str, str], value: float, *, unit: str = "Count"
    ) -> None:
        """One PutMetricData call with one datum."""
        await self.put_backlog_series(namespace, metric_name, [Series(tuple(dimensions.items()), int(value))],
                                      unit=unit)

    async def put_backlog_series(self, namespace: str, metric_name: str, series: Sequence[Series], *,
                                 unit: str = "Count") -> None:
        """Every series in one PutMetricData (split past 1,000 data)."""
        data = [{"MetricName": metric_name, "Dimensions": [{"Name": k, "Value": v} for k, v in s.dimensions],
                 "Value": float(s.value), "Unit": unit} for s in series]
        for start in range(0, len(data), MAX_DATA_PER_PUT):
            await self._call("cloudwatch", "put_metric_data",
                             {"Namespace": namespace, "MetricData": data[start:start + MAX_DATA_PER_PUT]})

    async def read_alarms(self, prefix: str, named: Sequence[str], *, by_prefix: bool) -> tuple[aws_scaling.Alarm, ...]:
        """The ``named`` alarms (≤ 100, one call) and, with ``by_prefix``, ours by name prefix (one more)."""
        queries: list[dict[str, Any]] = [{"AlarmNames": list(named)[:MAX_ALARM_NAMES]}] if named else []
        if by_prefix or not named:
            queries.append({"AlarmNamePrefix": prefix + "-"})
        found: dict[str, aws_scaling.Alarm] = {}
        for params in queries:
            answer = await self._call("cloudwatch", "describe_alarms", params)
            for a in answer.get("MetricAlarms") or []:
                name = str(a.get("AlarmName"))
                found[name] = aws_scaling.Alarm(name, a, "", tuple(a.get("AlarmActions") or []),
                                                str(a.get("StateValue") or ""))
        return tuple(found.values())

    async def put_alarm(self, alarm: aws_scaling.Alarm, action_arn: str, *, owner: str | None = None) -> None:
        """PutMetricAlarm invoking ``action_arn``; ``owner`` tags an alarm the operator creates."""
        params: dict[str, Any] = {"AlarmName": alarm.name, "AlarmActions": [action_arn], **dict(alarm.params)}
        if owner is not None:
            params["Tags"] = [{"Key": aws_scaling.OWNER_TAG, "Value": owner}]
        await self._call("cloudwatch", "put_metric_alarm", params)

    async def delete_alarm(self, name: str) -> None:
        await self._call("cloudwatch", "delete_alarms", {"AlarmNames": [name]})
