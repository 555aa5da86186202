"""The PrefectWorkPoolPolicy resource: pydantic models are the single source of truth.

``crds/`` is generated from these models (``make crds``); a test fails when the
committed CRD and the models disagree. Every field carries a description so that
``kubectl explain pwpp.spec...`` is useful. Cross-field rules are CEL
(``x-kubernetes-validations``) so the API server rejects bad input up front.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from prefect_workpool_operator.core.durations import DURATION_MAX_DIGITS, DURATION_PATTERN, DURATION_SAFE_PATTERN, parse_duration

MIN_INTERVAL = "10s"
# Events about a run (who claimed it) become visible a few seconds after they happen;
# a stale threshold must leave them time to arrive.
MIN_PENDING_TIMEOUT = "30s"


def _cel(rule: str, message: str) -> dict[str, object]:
    return {"rule": rule, "message": message}


# CEL's duration() fails with an opaque "evaluation error" on values beyond ~292 years:
# a shape rule says what is wrong, and every duration() rule is skipped when the shape is.
_DURATION_SHAPE = "self.matches('" + DURATION_SAFE_PATTERN + "')"


def _duration_rules(name: str, *rules: tuple[str, str]) -> dict[str, Any]:
    shape = _cel(_DURATION_SHAPE, f"{name} must be a Go duration such as 30s, 10m or 1h30m, "
                                  f"each number at most {DURATION_MAX_DIGITS} digits")
    guarded = [_cel(f"!{_DURATION_SHAPE} || ({rule})", message) for rule, message in rules]
    return {"x-kubernetes-validations": [shape, *guarded]}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _valid_duration(text: str) -> str:
    parse_duration(text)  # ValueError (too many digits, overflow) as the CEL shape rule says
    return text


Duration = Annotated[str, StringConstraints(pattern=DURATION_PATTERN, max_length=32), AfterValidator(_valid_duration)]


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


# The pattern keeps its old shape so that the API server reports the CEL rule's clear message.
_URL_PATTERN = r"^https?://[^\s/@]+(/[^\s]*)?$"
_NO_QUERY = "!self.contains('?') && !self.contains('#')"


def _no_query_or_fragment(name: str, url: str | None) -> str | None:
    # The same rule as the CEL on the field, for objects that reached us without it.
    if url is not None and ("?" in url or "#" in url):
        raise ValueError(f"{name} must not contain a query string (?) or a fragment (#)")
    return url


class PrefectConnection(_Model):
    """Where the work pool lives and how to reach it."""

    api_url: str = Field(
        max_length=2048,
        pattern=_URL_PATTERN,
        json_schema_extra={"x-kubernetes-validations": [
            _cel(_NO_QUERY, "apiUrl must not contain a query string (?) or a fragment (#)")
        ]},
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
    _api_url_shape = field_validator("api_url")(lambda cls, v: _no_query_or_fragment("apiUrl", v))

    request_timeout: Duration = Field(
        default="10s",
        description="Timeout of one HTTP request to the Prefect API (Go duration, e.g. 10s).",
        json_schema_extra=_duration_rules(
            "requestTimeout",
            ("duration(self) >= duration('1s') && duration(self) <= duration('2m')", "requestTimeout must be between 1s and 2m"),
        ),
    )


class StaleRunsSpec(_Model):
    """Recover flow runs stuck in PENDING: claimed by a worker that died before their infrastructure started.

    A stale run is touched only on proof that no one can still act on it: its ECS task is
    gone, or its claiming worker is gone and no task exists, seen so on two cycles.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.hardTimeout) || "
                    "!self.hardTimeout.matches('" + DURATION_SAFE_PATTERN + "') || "
                    "!self.pendingTimeout.matches('" + DURATION_SAFE_PATTERN + "') || "
                    "duration(self.hardTimeout) > duration(self.pendingTimeout)",
                    "hardTimeout must be longer than pendingTimeout",
                ),
                _cel(
                    "!has(self.hardTimeoutOverridesLiveClaimer) || !self.hardTimeoutOverridesLiveClaimer "
                    "|| has(self.hardTimeout)",
                    "hardTimeoutOverridesLiveClaimer needs hardTimeout",
                ),
            ]
        }
    )

    pending_timeout: Duration = Field(
        default="10m",
        description=(
            f"A run PENDING at least this long is stale (Go duration, at least {MIN_PENDING_TIMEOUT}). "
            "Keep it longer than the time your workers need to start a task (RunTask retries included)."
        ),
        json_schema_extra=_duration_rules(
            "pendingTimeout",
            (f"duration(self) >= duration('{MIN_PENDING_TIMEOUT}')", f"pendingTimeout must be at least {MIN_PENDING_TIMEOUT}"),
        ),
    )
    hard_timeout: Duration | None = Field(
        default=None,
        description=(
            "Opt-in. A stale run PENDING this long whose claiming worker is gone may be recovered even though "
            "the task it reported cannot be verified (no spec.ecs, or verifyInfrastructure false). It never "
            "overrides a live task, an unanswered ECS check, or a claimer that is still online (unless "
            "hardTimeoutOverridesLiveClaimer). Unset by default."
        ),
        json_schema_extra=_duration_rules("hardTimeout"),
    )
    hard_timeout_overrides_live_claimer: bool = Field(
        default=False,
        description=(
            "Past hardTimeout, recover runs even while their claiming worker is online (no live task found). "
            "That worker may still start the flow: the run can execute twice. A Warning Event says so each time."
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
        description=(
            "At most this many stale runs are looked at (claims, requeue counts, ECS) and changed per cycle: "
            "runs awaiting their confirming observation first, then the oldest; the rest wait (BatchLimit)."
        ),
    )
    verify_infrastructure: bool = Field(
        default=True,
        description=(
            "Ask ECS (spec.ecs) what became of a run's task before touching it; a live task means hands off. "
            "When false, or without spec.ecs, infrastructure counts as unknown: only runs whose claimer is "
            "gone and that never reported a task are recovered (others wait for hardTimeout, if set)."
        ),
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
    def hard_timeout_delta(self) -> timedelta | None:
        return parse_duration(self.hard_timeout) if self.hard_timeout is not None else None

    @model_validator(mode="after")
    def _hard_after_pending(self) -> StaleRunsSpec:
        # The same rules as the CEL above.
        hard = self.hard_timeout_delta
        if hard is not None and hard <= self.pending_timeout_delta:
            raise ValueError("hardTimeout must be longer than pendingTimeout")
        if self.hard_timeout_overrides_live_claimer and hard is None:
            raise ValueError("hardTimeoutOverridesLiveClaimer needs hardTimeout")
        return self


class AwsCredentialsRef(_Model):
    """Static AWS credentials from a Secret; prefer the pod's identity (IRSA, EKS Pod Identity)."""

    name: str = Field(min_length=1, max_length=253, description="Name of the Secret, in the policy's namespace.")
    access_key_id_key: str = Field(default="aws-access-key-id", min_length=1, max_length=253,
                                   description="Key holding the access key id.")
    secret_access_key_key: str = Field(default="aws-secret-access-key", min_length=1, max_length=253,
                                       description="Key holding the secret access key.")
    session_token_key: str | None = Field(default=None, max_length=253,
                                          description="Key holding a session token, if the credentials are temporary.")


class EcsTarget(_Model):
    """The ECS cluster (and service running the Prefect workers) behind the work pool."""

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$", max_length=32,
                        description="AWS region of the cluster, e.g. us-east-1.")
    cluster: str = Field(min_length=1, max_length=2048,
                         description="Cluster name or ARN where flow-run tasks and the worker service run.")
    service: str | None = Field(default=None, min_length=1, max_length=2048,
                                description="ECS service running the Prefect workers (needed for DesiredCount scaling).")
    endpoint_url: str | None = Field(
        default=None, max_length=2048, pattern=_URL_PATTERN,
        description="Override the AWS endpoint (VPC endpoints, tests). Omit for the regional default.",
        json_schema_extra={"x-kubernetes-validations": [
            _cel(_NO_QUERY, "endpointUrl must not contain a query string (?) or a fragment (#)")
        ]},
    )
    _endpoint_shape = field_validator("endpoint_url")(lambda cls, v: _no_query_or_fragment("endpointUrl", v))

    credentials_secret_ref: AwsCredentialsRef | None = Field(
        default=None,
        description="Static credentials from a Secret. Omit to use the pod's identity (IRSA, EKS Pod Identity, instance role).",
    )
    max_calls_per_cycle: int = Field(
        default=25, ge=1, le=1000,
        description="AWS API calls this policy may make per cycle; past it, infrastructure checks answer 'unknown' "
                    "so the operator never adds to ECS throttling.",
    )


class ScalingStep(_Model):
    """One step of a StepScaling policy."""

    at_least: int = Field(ge=1, le=100000, description="Applies when the backlog is at least this.")
    add: int = Field(ge=1, le=1000, description="Worker tasks to add.")


class ScalingSpec(_Model):
    """Backlog-driven scaling of the ECS service that runs the Prefect workers."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel("self.minWorkers <= self.maxWorkers", "minWorkers must not exceed maxWorkers")
            ]
        }
    )

    # "Off" was renamed: unquoted in YAML 1.1 it is the boolean false (docs/install.md, upgrading).
    mode: Literal["DesiredCount", "CloudWatchMetric", "TargetTracking", "StepScaling", "Disabled"] = Field(
        default="DesiredCount",
        description=(
            "DesiredCount: set the service's desiredCount. CloudWatchMetric: only publish the backlog as a "
            "CloudWatch metric (bring your own AWS policy). TargetTracking / StepScaling: publish the backlog and "
            "manage the service's Application Auto Scaling target and policy (docs/scaling.md). "
            "Disabled: compute and report only."
        ),
    )
    lookahead: Duration | None = Field(
        default=None,
        description=(
            "Count SCHEDULED runs due within this time in the backlog too (e.g. 2m), so workers are up when "
            "they become due. Omit (or 0s) for due runs only."
        ),
        json_schema_extra=_duration_rules("lookahead"),
    )
    work_queues: list[QueueName] = Field(
        default_factory=list,
        max_length=50,
        description="Scale on the backlog of these queues only. Empty means the whole pool (or spec.prefect.workQueues).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    per_queue_metrics: bool = Field(
        default=True,
        description="In the metric-publishing modes, also publish one series per work queue (dimension WorkQueue).",
    )
    steps: list[ScalingStep] = Field(
        default_factory=lambda: [ScalingStep(at_least=1, add=1), ScalingStep(at_least=5, add=3)],
        min_length=1, max_length=10,
        description="StepScaling: tasks added when the backlog reaches each bound (the default: >= 1 -> +1, >= 5 -> +3).",
    )
    min_workers: int = Field(default=1, ge=0, le=1000, description="Never fewer worker tasks than this.")
    max_workers: int = Field(default=10, ge=0, le=1000, description="Never more worker tasks than this.")
    backlog_per_worker: int = Field(default=5, ge=1, le=10000,
                                    description="Backlog runs one worker is expected to handle: desired = ceil(backlog / this).")
    include_pending: bool = Field(default=False, description="Count PENDING runs in the backlog too, not only Late/due ones.")
    max_step_up: int = Field(default=10, ge=1, le=1000, description="At most this many workers added per cycle.")
    max_step_down: int = Field(default=2, ge=1, le=1000, description="At most this many workers removed per cycle.")
    scale_down_stabilization: Duration = Field(
        default="5m", description="Scale down only to the highest count wanted within this window (Go duration).",
        json_schema_extra=_duration_rules("scaleDownStabilization"),
    )
    scale_up_cooldown: Duration = Field(default="0s", description="Minimum time between two scale-ups.",
                                        json_schema_extra=_duration_rules("scaleUpCooldown"))
    scale_down_cooldown: Duration = Field(default="1m", description="Minimum time between two scale-downs.",
                                          json_schema_extra=_duration_rules("scaleDownCooldown"))
    on_conflict: Literal["Hold", "Override"] = Field(
        default="Hold",
        description=(
            "When another owner manages the service (an Application Auto Scaling target, a deployment in "
            "progress): Hold leaves desiredCount alone and reports Conflict; Override sets it anyway."
        ),
    )
    metric_namespace: str = Field(default="Prefect", min_length=1, max_length=255,
                                  description="CloudWatch namespace for CloudWatchMetric mode.")
    metric_name: str = Field(default="BacklogRuns", min_length=1, max_length=255,
                             description="CloudWatch metric name for CloudWatchMetric mode (dimension WorkPool).")

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_workers > self.max_workers:
            raise ValueError("minWorkers must not exceed maxWorkers")
        bounds = [s.at_least for s in self.steps]
        if bounds != sorted(set(bounds)):
            raise ValueError("steps must have increasing atLeast bounds")
        return self

    @property
    def lookahead_delta(self) -> timedelta:
        return parse_duration(self.lookahead) if self.lookahead else timedelta(0)

    @property
    def publishes(self) -> bool:
        """Modes that publish the backlog to CloudWatch."""
        return self.mode in ("CloudWatchMetric", "TargetTracking", "StepScaling")


class JobTemplateSpec(_Model):
    """Keep chosen variable defaults of the pool's base job template at declared values."""

    variables: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Variable name -> default value, e.g. match_latest_revision_in_family: true (the variables a "
            "pool has depend on its prefect-aws version; 0.6 and later have no ECS start timeout). Only these defaults are "
            "managed; everything else in the template is left untouched."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class PolicySpec(_Model):
    """Desired behaviour for one Prefect work pool."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                _cel(
                    "!has(self.scaling) || self.scaling.mode != 'DesiredCount' || (has(self.ecs) && has(self.ecs.service))",
                    "scaling.mode DesiredCount needs spec.ecs with a service",
                ),
                _cel(
                    "!has(self.scaling) || self.scaling.mode != 'CloudWatchMetric' || has(self.ecs)",
                    "scaling.mode CloudWatchMetric needs spec.ecs (for the region)",
                ),
                _cel(
                    "!has(self.scaling) || !(self.scaling.mode in ['TargetTracking', 'StepScaling']) "
                    "|| (has(self.ecs) && has(self.ecs.service))",
                    "scaling.mode TargetTracking and StepScaling need spec.ecs with a service",
                ),
            ]
        }
    )

    prefect: PrefectConnection = Field(description="Connection to the Prefect API and the work pool to manage.")
    interval: Duration = Field(
        default="30s",
        description=f"How often the pool is reconciled (Go duration, at least {MIN_INTERVAL}).",
        json_schema_extra=_duration_rules(
            "interval", (f"duration(self) >= duration('{MIN_INTERVAL}')", f"interval must be at least {MIN_INTERVAL}")
        ),
    )
    suspend: bool = Field(
        default=False, description="Stop reconciling: nothing is read from or written to Prefect or AWS while true."
    )
    dry_run: bool = Field(
        default=False, description="Observe and decide, report what would be done, but change nothing in Prefect or AWS."
    )
    stale_runs: StaleRunsSpec | None = Field(
        default=None, description="Recovery of flow runs stuck in PENDING. Omit to leave PENDING runs alone."
    )
    ecs: EcsTarget | None = Field(
        default=None, description="The ECS cluster and worker service: used to verify runs' tasks and to scale."
    )
    scaling: ScalingSpec | None = Field(default=None, description="Scale the worker service from the backlog.")
    job_template: JobTemplateSpec | None = Field(
        default=None, description="Keep variable defaults of the pool's base job template at declared values."
    )

    @model_validator(mode="after")
    def _ecs_for_scaling(self) -> PolicySpec:
        # The same rules as the CEL above.
        mode = self.scaling.mode if self.scaling else "Disabled"
        if mode == "DesiredCount" and (self.ecs is None or not self.ecs.service):
            raise ValueError("scaling.mode DesiredCount needs spec.ecs with a service")
        if mode == "CloudWatchMetric" and self.ecs is None:
            raise ValueError("scaling.mode CloudWatchMetric needs spec.ecs (for the region)")
        if mode in ("TargetTracking", "StepScaling") and (self.ecs is None or not self.ecs.service):
            raise ValueError("scaling.mode TargetTracking and StepScaling need spec.ecs with a service")
        return self

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

    claimer_alive: int = Field(default=0, ge=0, description="Its claiming worker (the same process) is online.")
    infrastructure_alive: int = Field(default=0, ge=0, description="Its infrastructure (ECS task) is alive.")
    infrastructure_unknown: int = Field(
        default=0, ge=0, description="ECS could not be asked (throttled, call budget spent, unreachable): hold."
    )
    infrastructure_unverified: int = Field(
        default=0, ge=0, description="A task was reported for it and no ECS check is configured (until hardTimeout, if set)."
    )
    awaiting_confirmation: int = Field(
        default=0, ge=0, description="Recoverable on this observation; acted on only if still so one interval later."
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
    total_recovered: int = Field(
        default=0, ge=0,
        description="Runs of the pool requeued by the operator since the policy was created, counted from Prefect's "
                    "prefect.flow-run.Requeued events (within its event retention), so operator restarts lose nothing.",
    )


class LastRecovery(_Model):
    """The last cycle that changed runs."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it happened.")
    rescheduled: int = Field(default=0, ge=0, description="Runs moved back to SCHEDULED (Requeued).")
    crashed: int = Field(default=0, ge=0, description="Runs marked Crashed.")
    cancelled: int = Field(default=0, ge=0, description="Runs cancelled.")
    run_ids: list[RunId] = Field(
        default_factory=list, max_length=10, description="Up to 10 of the changed runs' ids."
    )
    exhausted: int = Field(default=0, ge=0, description="Of these, runs past maxRequeuesPerRun (given onExhausted).")
    reasons: dict[str, int] = Field(
        default_factory=dict, max_length=8,
        description="Changed runs by why they were recoverable (TaskGone, ClaimerGone, HardTimeout...).",
    )


class ScalingChange(_Model):
    """The last change of the service's desiredCount."""

    time: str = Field(json_schema_extra={"format": "date-time"}, description="When it was made.")
    from_: int | None = Field(default=None, alias="from", ge=0, description="desiredCount before.")
    to: int = Field(ge=0, description="desiredCount after.")
    reason: str = Field(max_length=64, description="Why, e.g. ScaledUp, ScaledDown, ScaledFromZero.")


class QueueBacklog(_Model):
    """One work queue's backlog."""

    name: str = Field(max_length=255, description="The work queue.")
    backlog: int = Field(ge=0, description="Its backlog (as the pool's is counted).")


class PublishedDatum(_Model):
    """The last backlog value sent to CloudWatch."""

    time: str = Field(json_schema_extra={"format": "date-time"},
                      description="When this value was first published (it is published every cycle).")
    value: int = Field(ge=0, description="The pool's backlog published.")
    metric: str = Field(max_length=600, description="Namespace/MetricName and dimensions.")
    series: int = Field(default=1, ge=0, description="Series published (the pool's plus one per queue).")


class AlarmFigure(_Model):
    """A CloudWatch alarm acting on the managed policy."""

    name: str = Field(max_length=255, description="Alarm name.")
    state: str = Field(max_length=32, description="OK, ALARM or INSUFFICIENT_DATA.")


class AutoscalingFigures(_Model):
    """The Application Auto Scaling resources the operator manages (TargetTracking/StepScaling)."""

    scalable_target: str | None = Field(default=None, max_length=600, description="Resource id and min/max capacity.")
    policy: str | None = Field(default=None, max_length=600, description="The scaling policy's name and type.")
    alarms: list[AlarmFigure] = Field(default_factory=list, max_length=10, description="Its alarms and their states.")
    last_activity: str | None = Field(default=None, max_length=1024,
                                      description="The last scaling activity AWS reported for the service.")
    owned_target: bool = Field(default=False, description=(
        "The operator registered the scalable target, so it deregisters it when the mode changes or the policy is "
        "deleted (a target it did not create is never removed)."))


class ScalingFigures(_Model):
    """Worker scaling in the last cycle."""

    backlog: int = Field(default=0, ge=0, description="The backlog scaling follows (Late/due runs, plus PENDING if included).")
    recommendation: int | None = Field(default=None, ge=0, description="Workers the backlog wants, within bounds.")
    desired: int | None = Field(default=None, ge=0, description="The ECS service's desiredCount.")
    running: int | None = Field(default=None, ge=0, description="The ECS service's runningCount.")
    pending: int | None = Field(default=None, ge=0, description="The ECS service's pendingCount.")
    last_change: ScalingChange | None = Field(default=None, description="The last change of desiredCount.")
    upcoming: int | None = Field(default=None, ge=0,
                                 description="SCHEDULED runs due within scaling.lookahead, counted in the backlog.")
    queues: list[QueueBacklog] = Field(default_factory=list, max_length=200, description="Backlog per work queue.")
    published: PublishedDatum | None = Field(default=None, description="The last datum published to CloudWatch.")
    autoscaling: AutoscalingFigures | None = Field(default=None, description="Managed Application Auto Scaling resources.")


class OwnerStatus(_Model):
    """Which operator replica cycles the policy (see docs/design.md, sharding)."""

    shard: str = Field(max_length=63, description="The shard (label prefectops.dev/shard; unlabelled: default).")
    pod: str = Field(max_length=253, description="The operator pod holding the shard's Lease.")
    since: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When this pod took the policy over."
    )


class PolicyStatus(_Model):
    """What the operator observed and did; written by the operator only."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation of the spec last reconciled."
    )
    conditions: list[ConditionStatus] = Field(
        default_factory=list,
        description="Standard conditions: Ready, PrefectConnected, WorkPoolReady, StaleRunsRecovered, AwsConnected, Scaling, JobTemplateSynced, ConfigConsistent.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pool_status: str | None = Field(
        default=None, max_length=32, description="The work pool's own status: READY, NOT_READY or PAUSED."
    )
    workers: WorkerFigures | None = Field(default=None, description="Workers of the pool.")
    runs: RunFigures | None = Field(default=None, description="Run counts of the pool.")
    stale_runs: StaleRunFigures | None = Field(default=None, description="Stale-run recovery figures.")
    scaling: ScalingFigures | None = Field(default=None, description="Worker scaling figures.")
    last_recovery: LastRecovery | None = Field(default=None, description="The last cycle that changed runs.")
    prefect_version: str | None = Field(
        default=None, max_length=64, description="Prefect server version, when the server reports it."
    )
    last_reconcile_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description=(
            "End of the cycle that last changed the status; refreshed at least every "
            "PWO_STATUS_HEARTBEAT_SECONDS (10 min) while cycles run."
        ),
    )
    owner: OwnerStatus | None = Field(default=None, description="The shard and the operator pod that cycle the policy.")
    # Named so that kubectl describe, which sorts status keys alphabetically, shows it first.
    brief: str | None = Field(
        default=None, max_length=1024,
        description="The policy in one line: what it does, what it did last, what is wrong and what to do.",
    )


class PrefectWorkPoolPolicy(_Model):
    """Keeps one Prefect work pool healthy: observe, recover, scale, tune, and report."""

    spec: PolicySpec = Field(description="Desired behaviour for the work pool.")
    status: PolicyStatus | None = Field(default=None, description="Observed state, written by the operator.")
