"""Rules as the spec models' defaults make them: the models are the one source of defaults."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from prefect_workpool_operator.core.recovery_plan import recovery_rules
from prefect_workpool_operator.core.scaling import ScalingRules
from prefect_workpool_operator.core.scaling_plan import scaling_rules
from prefect_workpool_operator.core.stale import RecoveryRules
from prefect_workpool_operator.schema.models import ScalingSpec, StaleRunsSpec

DEFAULT_INTERVAL = timedelta(seconds=30)


def recovery(**fields: Any) -> RecoveryRules:
    """A default ``staleRuns`` (pendingTimeout 10m) at the default interval, with ``fields`` replaced."""
    return replace(recovery_rules(StaleRunsSpec(), DEFAULT_INTERVAL), **fields)


def scaling(min_workers: int, max_workers: int, **fields: Any) -> ScalingRules:
    """A default ``scaling`` between the bounds, with ``fields`` replaced."""
    return replace(scaling_rules(ScalingSpec(minWorkers=min_workers, maxWorkers=max_workers)), **fields)
