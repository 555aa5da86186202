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


def _cel(rule: str, message: str) -> dict[str, object]:
    return {"rule": rule, "message": message}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32)]


QueueName = Annotated[
    str, StringConstraints(min_length=1, max_length=255), Field(description="Name of a work queue of the pool.")
]


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


class PolicyStatus(_Model):
    """What the operator observed and did; written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec last reconciled."
    )
    conditions: list[ConditionStatus] = Field(
        default_factory=list,
        description="Standard conditions: Ready, PrefectConnected, WorkPoolReady.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pool_status: str | None = Field(
        default=None, max_length=32, description="The work pool's own status: READY, NOT_READY or PAUSED."
    )
    workers: WorkerFigures | None = Field(default=None, description="Workers of the pool.")
    runs: RunFigures | None = Field(default=None, description="Run counts of the pool.")
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
