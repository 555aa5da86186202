"""The PrefectWorkPoolPolicy resource: pydantic models are the single source of truth.

``crds/`` is generated from these models (``make crds``); a test fails when the
committed CRD and the models disagree. Every field carries a description so that
``kubectl explain pwpp.spec...`` is useful. Cross-field rules are CEL
(``x-kubernetes-validations``) so the API server rejects bad input up front.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from .core.durations import DURATION_PATTERN, parse_duration

MIN_INTERVAL = "10s"
# Events about a run (who claimed it) become visible a few seconds after they happen;
# a stale threshold must leave them time to arrive.
MIN_PENDING_TIMEOUT = "30s"


def _cel(rule: str, message: str) -> dict[str, object]:
    return {"rule": rule, "message": message}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]


QueueName = Annotated[
    str, StringConstraints(min_length=1, max_length=255), Field(description="Name of a work queue of the pool.")
]


RunId = Annotated[str, StringConstraints(max_length=64), Field(description="A flow-run id.")]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=255), Field(description="A flow-run tag.")]


class SecretKeyRef(_Model):
    """A key of a Secret in the policy's own namespace."""

    name: str = Field(
        min_length=1, max_length=253, description="Name of the Secret, in the same namespace as the policy."
    )
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret's data.")


class PrefectAuth(_Model):
    """How the operator authenticates to the Prefect API. Set at most one reference."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!(has(self.apiKeySecretRef) && has(self.basicAuthSecretRef))",
                    "set at most one of apiKeySecretRef and basicAuthSecretRef",
                )
            ]
        }
    )

    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Prefect Cloud API key (sent as 'Authorization: Bearer <key>'), read from this Secret key.",
    )
    basic_auth_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Self-hosted server basic auth: the Secret key holds 'user:password', the value the server "
            "has in PREFECT_SERVER_API_AUTH_STRING."
        ),
    )

    @model_validator(mode="after")
    def _at_most_one(self) -> PrefectAuth:
        # Same rule as the CEL above, for objects that reached us without it (an older CRD).
        if self.api_key_secret_ref is not None and self.basic_auth_secret_ref is not None:
            raise ValueError("set at most one of apiKeySecretRef and basicAuthSecretRef")
        return self


class PrefectConnection(_Model):
    """Where the work pool lives and how to reach it."""

    api_url: str = Field(
        max_length=2048,
        pattern=r"^https?://[^\s/@]+(/[^\s]*)?$",
        description=(
            "Prefect API URL: self-hosted 'http(s)://host:4200/api' or Prefect Cloud "
            "'https://api.prefect.cloud/api/accounts/<account>/workspaces/<workspace>'."
        ),
    )
    auth: PrefectAuth | None = Field(
        default=None, description="Credentials for the API. Omit for a self-hosted server without auth."
    )
    work_pool: str = Field(min_length=1, max_length=255, description="Name of the Prefect work pool to manage.")
    work_queues: list[QueueName] = Field(
        default_factory=list,
        max_length=50,
        description="Restrict run figures to these queues of the pool. Empty means the whole pool.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    request_timeout: Duration = Field(
        default="10s",
        description="Timeout of one HTTP request to the Prefect API (Go duration, e.g. 10s).",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "duration(self) >= duration('1s') && duration(self) <= duration('2m')",
                    "requestTimeout must be between 1s and 2m",
                )
            ]
        },
    )


class StaleRunsSpec(_Model):
    """Recover flow runs stuck in PENDING: claimed by a worker that died before their infrastructure started.

    A stale run is touched only when no one can act on it any more: its claiming worker is
    offline or unknown and no infrastructure for it is known to be alive.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "duration(self.hardTimeout) > duration(self.pendingTimeout)",
                    "hardTimeout must be longer than pendingTimeout",
                )
            ]
        }
    )

    pending_timeout: Duration = Field(
        default="10m",
        description=(
            f"A run PENDING at least this long is stale (Go duration, at least {MIN_PENDING_TIMEOUT}). "
            "Keep it longer than the ECS task start timeout of the pool."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    f"duration(self) >= duration('{MIN_PENDING_TIMEOUT}')",
                    f"pendingTimeout must be at least {MIN_PENDING_TIMEOUT}",
                )
            ]
        },
    )
    hard_timeout: Duration = Field(
        default="1h",
        description=(
            "A stale run whose claiming worker is still online, or whose infrastructure could not be "
            "verified, is left alone until it has been PENDING this long."
        ),
    )
    action: Literal["Reschedule", "MarkCrashed", "Cancel", "ReportOnly"] = Field(
        default="Reschedule",
        description=(
            "What to do with a recoverable run: Reschedule (back to SCHEDULED, state name 'Requeued'), "
            "MarkCrashed, Cancel, or ReportOnly (count it, change nothing)."
        ),
    )
    max_requeues_per_run: int = Field(
        default=3,
        ge=0,
        le=100,
        description="How many times one run may be rescheduled by the operator; then onExhausted applies.",
    )
    on_exhausted: Literal["MarkCrashed", "Cancel", "ReportOnly"] = Field(
        default="MarkCrashed", description="What to do with a run that reached maxRequeuesPerRun."
    )
    max_runs_per_cycle: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="At most this many runs are changed per cycle (oldest first); the rest wait for the next cycle.",
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=20,
        description="Only runs carrying all of these tags are considered. Empty means any run.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    work_queues: list[QueueName] = Field(
        default_factory=list,
        max_length=50,
        description="Only runs of these queues are considered. Empty means spec.prefect.workQueues (or the whole pool).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @property
    def pending_timeout_delta(self) -> timedelta:
        return parse_duration(self.pending_timeout)

    @property
    def hard_timeout_delta(self) -> timedelta:
        return parse_duration(self.hard_timeout)

    @model_validator(mode="after")
    def _hard_after_pending(self) -> StaleRunsSpec:
        if self.hard_timeout_delta <= self.pending_timeout_delta:
            raise ValueError("hardTimeout must be longer than pendingTimeout")
        return self


class PolicySpec(_Model):
    """Desired behaviour for one Prefect work pool."""

    prefect: PrefectConnection = Field(description="Connection to the Prefect API and the work pool to manage.")
    interval: Duration = Field(
        default="30s",
        description=f"How often the pool is reconciled (Go duration, at least {MIN_INTERVAL}).",
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(f"duration(self) >= duration('{MIN_INTERVAL}')", f"interval must be at least {MIN_INTERVAL}")
            ]
        },
    )
    suspend: bool = Field(
        default=False, description="Stop reconciling: nothing is read from or written to Prefect while true."
    )
    dry_run: bool = Field(
        default=False, description="Observe and decide, report what would be done, but change nothing."
    )
    stale_runs: StaleRunsSpec | None = Field(
        default=None, description="Recovery of flow runs stuck in PENDING. Omit to leave PENDING runs alone."
    )

    @property
    def interval_delta(self) -> timedelta:
        return parse_duration(self.interval)

    @property
    def request_timeout_seconds(self) -> float:
        return parse_duration(self.prefect.request_timeout).total_seconds()


# ---- status -------------------------------------------------------------------------


class ConditionStatus(_Model):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready or PrefectConnected.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status last changed."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed from."
    )


class WorkerFigures(_Model):
    """Prefect workers of the pool, by heartbeat status."""

    online: int = Field(default=0, ge=0, description="Workers whose heartbeat is recent (ONLINE).")
    offline: int = Field(default=0, ge=0, description="Workers known to the pool but OFFLINE.")


class RunFigures(_Model):
    """Flow runs of the pool (and queues, if set) by state, counted server-side."""

    late: int = Field(default=0, ge=0, description="SCHEDULED runs whose start time has passed (Late or due).")
    pending: int = Field(default=0, ge=0, description="Runs in PENDING (claimed by a worker, not yet started).")
    running: int = Field(default=0, ge=0, description="Runs in RUNNING.")


class SkippedFigures(_Model):
    """Stale runs left alone this cycle, by reason."""

    claimer_online: int = Field(default=0, ge=0, description="Its claiming worker is still online (until hardTimeout).")
    infrastructure_alive: int = Field(default=0, ge=0, description="Its infrastructure (ECS task) is alive.")
    infrastructure_unknown: int = Field(default=0, ge=0, description="Its infrastructure could not be checked.")
    infrastructure_unverified: int = Field(
        default=0, ge=0, description="It has infrastructure that no check is configured for (until hardTimeout)."
    )
    batch_limit: int = Field(default=0, ge=0, description="Over maxRunsPerCycle: waits for the next cycle.")
    moved_on: int = Field(default=0, ge=0, description="It left PENDING before the operator's write.")


class StaleRunFigures(_Model):
    """Stale-run recovery in the last cycle."""

    stale: int = Field(default=0, ge=0, description="Runs PENDING longer than pendingTimeout.")
    recovered: int = Field(default=0, ge=0, description="Runs changed this cycle.")
    would_recover: int = Field(default=0, ge=0, description="Recoverable runs left unchanged (dryRun or ReportOnly).")
    exhausted: int = Field(default=0, ge=0, description="Runs that reached maxRequeuesPerRun this cycle.")
    skipped: SkippedFigures | None = Field(default=None, description="Stale runs left alone, by reason.")
    total_recovered: int = Field(default=0, ge=0, description="Runs changed since the policy was created.")


class LastRecovery(_Model):
    """The last cycle that changed runs."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it happened.")
    rescheduled: int = Field(default=0, ge=0, description="Runs moved back to SCHEDULED (Requeued).")
    crashed: int = Field(default=0, ge=0, description="Runs marked Crashed.")
    cancelled: int = Field(default=0, ge=0, description="Runs cancelled.")
    run_ids: list[RunId] = Field(
        default_factory=list, max_length=10, description="Up to 10 of the changed runs' ids."
    )


class PolicyStatus(_Model):
    """What the operator observed and did; written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec last reconciled."
    )
    conditions: list[ConditionStatus] = Field(
        default_factory=list,
        description="Standard conditions: Ready, PrefectConnected, WorkPoolReady, StaleRunsRecovered.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pool_status: str | None = Field(
        default=None, max_length=32, description="The work pool's own status: READY, NOT_READY or PAUSED."
    )
    workers: WorkerFigures | None = Field(default=None, description="Workers of the pool.")
    runs: RunFigures | None = Field(default=None, description="Run counts of the pool.")
    stale_runs: StaleRunFigures | None = Field(default=None, description="Stale-run recovery figures.")
    last_recovery: LastRecovery | None = Field(default=None, description="The last cycle that changed runs.")
    prefect_version: str | None = Field(
        default=None, max_length=64, description="Prefect server version, when the server reports it."
    )
    last_reconcile_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="End of the last reconcile cycle."
    )


class PrefectWorkPoolPolicy(_Model):
    """Keeps one Prefect work pool healthy: observe, recover, scale, tune, and report."""

    spec: PolicySpec = Field(description="Desired behaviour for the work pool.")
    status: PolicyStatus | None = Field(default=None, description="Observed state, written by the operator.")
