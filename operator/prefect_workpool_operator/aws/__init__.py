"""The AWS adapter, one module per service over one transport.

- ``boto_clients``: the boto3 clients shared by every policy, signing with static keys;
- ``transport``: retries, the error table (``AwsError`` reasons), the call budget and
  redaction;
- ``ecs``: the worker service and the run tasks (plus ``EcsInfrastructureCheck``);
- ``cloudwatch``: the backlog metric;
- ``autoscaling``: Application Auto Scaling targets.

``AwsClient`` is one policy's client with every service's calls. What the answers mean
(a task's liveness, the run-id tag scan) is decided in ``core.infrastructure``.
"""

from __future__ import annotations

from prefect_workpool_operator.aws.autoscaling import SCALABLE_DIMENSION, AutoScalingCalls
from prefect_workpool_operator.aws.boto_clients import SHARED_CLIENTS, AwsCredentials, SharedBotoClients
from prefect_workpool_operator.aws.cloudwatch import CloudWatchCalls
from prefect_workpool_operator.aws.ecs import DEFAULT_MAX_LIST_PAGES, EcsCalls, EcsInfrastructureCheck, ServiceState
from prefect_workpool_operator.aws.transport import (
    ACCESS_DENIED,
    AWS_ENDPOINT_INVALID,
    AWS_ERROR,
    CALL_BUDGET_EXHAUSTED,
    CLUSTER_NOT_FOUND,
    INVALID_CONFIGURATION,
    SERVICE_NOT_FOUND,
    THROTTLED,
    UNREACHABLE,
    AwsError,
    CallBudget,
)


class AwsClient(EcsCalls, CloudWatchCalls, AutoScalingCalls):
    """The AWS calls one policy makes, in one region with one set of credentials
    (see ``transport.AwsTransport`` for the budget, ``last_error`` and ``calls``)."""

    def __init__(self, region: str, *, max_list_pages: int = DEFAULT_MAX_LIST_PAGES, **transport: object) -> None:
        super().__init__(region, **transport)  # type: ignore[arg-type]
        self.max_list_pages = max_list_pages


__all__ = [
    "ACCESS_DENIED", "AWS_ENDPOINT_INVALID", "AWS_ERROR", "CALL_BUDGET_EXHAUSTED", "CLUSTER_NOT_FOUND",
    "INVALID_CONFIGURATION", "SCALABLE_DIMENSION", "SERVICE_NOT_FOUND", "SHARED_CLIENTS", "THROTTLED", "UNREACHABLE",
    "AwsClient", "AwsCredentials", "AwsError", "CallBudget", "EcsInfrastructureCheck", "ServiceState",
    "SharedBotoClients",
]
