"""One reconcile cycle of one policy, without kopf: body in, status patch and Events out.

The kopf glue (``handlers.py``) only decides *when* to call ``run_cycle`` and applies
what it returns. Keeping this free of kopf makes the cycle testable against real
servers with nothing but the clients it needs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import httpx
from pydantic import ValidationError

from . import workers_scaling
from .aws_api import AwsClient, AwsError, EcsInfrastructureCheck
from .core import claims, health, job_template, pool_types, scaling, stale
from .core.conditions import NOT_CHECKED, Condition, changed_conditions, format_time, merge_conditions, unobserved
from .core.health import Failure, PoolObservation
from .core.log_gate import LogGate
from .core.secret_values import Use
from .kube_api import SecretError, SecretReader, read_secret_for
from .models import PolicySpec
from .prefect_api import PrefectClient, PrefectError
from .prefect_http import PrefectHttp
from .recovery import RecoveryMemory, recover_stale_runs
from .workers_scaling import EcsRuntime

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    covers: str | None = None  # the condition type whose change this Event already announces


@dataclass
class CycleOutcome:
    status: dict[str, Any]
    events: list[Event]
    spec: PolicySpec | None = None


@dataclass
class PolicyRuntime:
    """What a policy keeps between cycles, in memory (kopf's per-object memo)."""

    client: PrefectClient | None = None
    client_key: str | None = None
    queues_checked_generation: int | None = None
    last_generation: int | None = None
    next_start: float | None = None  # epoch seconds (core.schedule), set by the kopf glue
    recovery: RecoveryMemory = field(default_factory=RecoveryMemory)
    ecs: EcsRuntime = field(default_factory=EcsRuntime)
    log_gate: LogGate = field(default_factory=LogGate)  # a persisting failure is logged once, then reminded
    extra: dict[str, Any] = field(default_factory=dict)

    def log_failure(self, policy: str, what: str, now: datetime) -> None:
        verdict = self.log_gate.decide(what, now)
        if verdict == "full":
            log.warning("policy %s: %s", policy, what)
        elif verdict == "reminder":
            log.warning("policy %s: still failing (%d cycles): %s", policy, self.log_gate.repeats, what[:200])


async def run_cycle(
    body: Mapping[str, Any],
    *,
    http: httpx.AsyncClient | PrefectHttp,
    secrets: SecretReader,
    runtime: PolicyRuntime,
    now: datetime,
    rival: claims.Rival | None = None,
) -> CycleOutcome:
    """One cycle; with a ``rival`` (an older policy claims the same pool or service) it touches nothing."""
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    previous = (body.get("status") or {}).get("conditions")
    figures: dict[str, Any] = {}
    runtime.ecs.autoscaling.restore(f"{meta.get('namespace')}/{meta.get('name')}", body.get("status"))

    spec: PolicySpec | None = None
    acted: list[Event] = []
    try:
        spec = PolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        conditions = health.health_conditions(None, Failure(health.INVALID_SPEC, _describe(exc)), pool="", api_url="")
    else:
        if rival is not None:
            conditions = [Condition(health.READY, "False", claims.CONFLICT, claims.conflict_message(rival))]
        else:
            conditions, figures, acted = await _observe(
                spec, meta, http, secrets, runtime, now
            )

    retired = _retired_conditions(spec)
    conditions += unobserved(previous, conditions, retired, f"{conditions[0].reason}. {conditions[0].message}")
    finished = max(now, datetime.now(timezone.utc))  # the cycle's end, as documented
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous, conditions, now, generation, drop=retired),
        "lastReconcileTime": format_time(finished),
        **figures,
    }
    if stale.STALE_RUNS_RECOVERED in retired:
        status["staleRuns"] = None
    if scaling.SCALING in retired:
        status["scaling"] = None
    if conditions[0].status == "True":
        runtime.log_gate.clear()
    events = _condition_events(changed_conditions(previous, conditions), covered={e.covers for e in acted})
    return CycleOutcome(status=status, events=events + acted, spec=spec)


async def _observe(
    spec: PolicySpec,
    meta: Mapping[str, Any],
    http: httpx.AsyncClient | PrefectHttp,
    secrets: SecretReader,
    runtime: PolicyRuntime,
    now: datetime,
) -> tuple[list[Condition], dict[str, Any], list[Event]]:
    conn = spec.prefect
    namespace, generation = meta.get("namespace", ""), meta.get("generation")
    policy = f"{namespace}/{meta.get('name')}"
    if spec.suspend:
        return health.suspended_conditions(), {}, []
    try:
        auth_header = await _auth_header(spec, namespace, secrets)
        client = _client_for(spec, auth_header, http, runtime)
        if runtime.queues_checked_generation != generation:
            await client.check_queues(conn.work_pool, list(conn.work_queues))
            runtime.queues_checked_generation = generation
        observation = await client.observe_pool(conn.work_pool, list(conn.work_queues), now)
    except (SecretError, PrefectError) as exc:
        failure = Failure(exc.reason, exc.message)
        runtime.log_failure(policy, f"{failure.reason}: {failure.message}", now)
        # Fail static: keep the last figures rather than report zeros we did not see.
        conditions = health.health_conditions(None, failure, pool=conn.work_pool, api_url=conn.api_url)
        if spec.scaling is not None:
            conditions.append(workers_scaling.holding("No fresh data from Prefect"))
        return conditions, {}, []

    cycle = _Cycle(
        conditions=health.health_conditions(observation, None, pool=conn.work_pool, api_url=conn.api_url),
        figures=status_figures(observation),
    )
    features = pool_types.features_for(observation.pool_type)
    fit = pool_types.pool_type_condition(
        features, pool=conn.work_pool, stale_runs=spec.stale_runs is not None, ecs=spec.ecs is not None,
        scaling=spec.scaling is not None, job_template=spec.job_template is not None,
    )
    if pool_types.POOL_TYPE_SUPPORTED not in _retired_conditions(spec):
        cycle.conditions.append(fit)
    if fit.status != "True":
        cycle.fail(fit.reason, fit.message)
    aws = await _aws_step(spec, namespace, secrets, runtime, observation, cycle, now, client) if features.ecs else None
    if spec.stale_runs is not None and features.recovery:
        await _recovery_step(spec, policy, client, aws, runtime, observation, _created(meta), cycle, now)
    if spec.job_template is not None or (spec.stale_runs is not None and features.ecs):
        await _template_step(spec, client, observation, cycle, ecs_checks=features.ecs)
    if spec.ecs is not None and features.ecs:
        cycle.conditions.append(workers_scaling.aws_condition(aws, cycle.aws_error))
    if not features.ecs or not features.recovery:
        _not_applicable(spec, features, cycle)
    return cycle.conditions, cycle.figures, cycle.events


def _not_applicable(spec: PolicySpec, features: pool_types.Features, cycle: _Cycle) -> None:
    """Features the pool's type does not fit say so, rather than keep an old value."""
    why = f"not applicable to a {features.pool_type!r} pool; nothing was done"
    if spec.scaling is not None:
        cycle.conditions.append(Condition(scaling.SCALING, "False", pool_types.UNSUPPORTED_POOL_TYPE, f"Scaling {why}."))
    if spec.ecs is not None:
        cycle.conditions.append(Condition(workers_scaling.AWS_CONNECTED, "Unknown", NOT_CHECKED, f"ECS {why}."))
    if spec.stale_runs is not None:
        cycle.conditions.append(Condition(job_template.CONFIG_CONSISTENT, "True", "NotApplicable",
                                          f"No ECS task start timeout for a {features.pool_type!r} pool."))
        if not features.recovery:
            cycle.conditions.append(Condition(stale.STALE_RUNS_RECOVERED, "False", pool_types.UNSUPPORTED_POOL_TYPE,
                                              f"Stale-run recovery {why}: no worker claims its runs."))


@dataclass
class _Cycle:
    """What the steps of one cycle add up to."""

    conditions: list[Condition]
    figures: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    aws_error: AwsError | None = None

    def fail(self, reason: str, message: str) -> None:
        """A step failed: the policy is not Ready, whatever the other steps did."""
        self.conditions[0] = Condition(health.READY, "False", reason, message)


async def _aws_step(
    spec: PolicySpec, namespace: str, secrets: SecretReader, runtime: PolicyRuntime,
    observation: PoolObservation, cycle: _Cycle, now: datetime, prefect: PrefectClient | None = None,
) -> AwsClient | None:
    if spec.ecs is None:
        return None
    try:
        aws = await workers_scaling.aws_client_for(spec.ecs, namespace, secrets, runtime.ecs)
    except SecretError as exc:
        cycle.fail(exc.reason, exc.message)
        cycle.aws_error = AwsError(exc.reason, exc.message)
        return None
    if spec.scaling is None:
        try:  # scaling removed: what the managed modes created goes too
            released = await workers_scaling.aws_autoscaling.release(aws, spec.ecs, runtime.ecs.autoscaling,
                                                                     dry_run=spec.dry_run)
        except AwsError as exc:
            cycle.aws_error = exc
            return aws
        cycle.events += [Event(*e) for e in released]
        return aws
    try:
        outcome = await workers_scaling.scale_workers(
            aws, spec.scaling, spec.ecs, observation, runtime.ecs,
            pool=spec.prefect.work_pool, dry_run=spec.dry_run, now=now,
            prefect=prefect, queues=tuple(spec.prefect.work_queues),
        )
    except AwsError as exc:
        cycle.aws_error = exc
        cycle.conditions.append(workers_scaling.holding(f"ECS did not answer ({exc.reason})"))
        cycle.fail(exc.reason, f"Scaling stopped: {exc.message}")
        return aws
    cycle.conditions.append(outcome.condition)
    cycle.figures["scaling"] = outcome.figures
    if outcome.event:
        cycle.events.append(Event(*outcome.event, covers=scaling.SCALING))
    cycle.events += [Event(*e, covers=scaling.SCALING) for e in outcome.more_events]
    return aws


async def _recovery_step(
    spec: PolicySpec, policy: str, client: PrefectClient, aws: AwsClient | None, runtime: PolicyRuntime,
    observation: PoolObservation, created: datetime | None, cycle: _Cycle, now: datetime,
) -> None:
    stale_spec = spec.stale_runs
    assert stale_spec is not None
    observed_queues = set(spec.prefect.work_queues)  # the scope observe_pool counted PENDING runs in
    covered = not observed_queues or set(stale_spec.work_queues or observed_queues) <= observed_queues
    check = None
    if aws is not None and spec.ecs is not None and stale_spec.verify_infrastructure:
        check = EcsInfrastructureCheck(aws, spec.ecs.cluster)
    try:
        outcome = await recover_stale_runs(
            client,
            stale_spec,
            pool=spec.prefect.work_pool,
            queues=list(spec.prefect.work_queues),
            policy=policy,
            online_workers=observation.online_workers,
            dry_run=spec.dry_run,
            memory=runtime.recovery,
            now=now,
            interval=spec.interval_delta,
            counting_since=created,
            infrastructure_check=check,
            pending_observed=observation.pending if covered else None,
        )
    except PrefectError as exc:
        runtime.log_failure(policy, f"recovery: {exc.reason}: {exc.message}", now)
        message = f"Stale-run recovery stopped: {exc.message}"
        cycle.fail(exc.reason, message)
        cycle.conditions.append(Condition(stale.STALE_RUNS_RECOVERED, "False", exc.reason, message))
        return
    cycle.conditions.append(outcome.condition)
    cycle.figures["staleRuns"] = outcome.figures
    if outcome.last_recovery:
        cycle.figures["lastRecovery"] = outcome.last_recovery
    if outcome.event_message:
        cycle.events.append(Event("Normal", "RunsRecovered", outcome.event_message, covers=stale.STALE_RUNS_RECOVERED))
    if outcome.warning:
        cycle.events.append(Event("Warning", "RecoveredDespiteLiveClaimer", outcome.warning))


async def _template_step(
    spec: PolicySpec, client: PrefectClient, observation: PoolObservation, cycle: _Cycle, *, ecs_checks: bool = True
) -> None:
    declared = dict(spec.job_template.variables) if spec.job_template else {}
    pool = spec.prefect.work_pool
    if spec.job_template is not None:
        plan = job_template.plan_template(observation.base_job_template, declared)
        condition = job_template.template_condition(plan, pool=pool, dry_run=spec.dry_run, declared=len(declared))
        if plan.writable and not spec.dry_run:
            assert plan.template is not None
            try:
                await client.update_base_job_template(pool, plan.template)
                # Never report a value as set before the template, read back, holds it.
                reread = (await client.read_work_pool(pool)).get("base_job_template")
            except PrefectError as exc:
                condition = Condition(job_template.JOB_TEMPLATE_SYNCED, "False", exc.reason,
                                      f"Could not update the base job template: {exc.message}")
                cycle.fail(exc.reason, condition.message)
            else:
                condition = job_template.applied_condition(plan, reread, pool=pool) or condition
                if condition.status == "True":
                    cycle.events.append(
                        Event("Normal", "JobTemplateRepaired", condition.message, covers=job_template.JOB_TEMPLATE_SYNCED)
                    )
        cycle.conditions.append(condition)
    if not ecs_checks:
        return
    pending_timeout = spec.stale_runs.pending_timeout_delta if spec.stale_runs else None
    consistency = job_template.timeout_consistency(pending_timeout, observation.base_job_template, declared)
    if consistency is not None:
        cycle.conditions.append(consistency)


def _condition_events(changed: list[Condition], covered: set[str | None]) -> list[Event]:
    """One Event per distinct news: Ready and PrefectConnected failing alike say it once,
    and conditions turning Unknown (input missing) add nothing to the cause's Event."""
    events: dict[tuple[str, str], Event] = {}
    for c in changed:
        if c.type in covered or c.status == "Unknown":  # an action's own Event already tells it
            continue
        events.setdefault((c.reason, c.message), Event("Normal" if c.status == "True" else "Warning", c.reason, c.message))
    return list(events.values())


def _retired_conditions(spec: PolicySpec | None) -> set[str]:
    """Conditions of features the spec no longer enables go away."""
    if spec is None:
        return set()
    retired = set()
    if spec.stale_runs is None:
        retired.add(stale.STALE_RUNS_RECOVERED)
    if spec.scaling is None:
        retired.add(scaling.SCALING)
    if spec.ecs is None:
        retired.add(workers_scaling.AWS_CONNECTED)
    if spec.job_template is None:
        retired.add(job_template.JOB_TEMPLATE_SYNCED)
    if spec.stale_runs is None:
        retired.add(job_template.CONFIG_CONSISTENT)
    if spec.stale_runs is None and spec.ecs is None and spec.scaling is None and spec.job_template is None:
        retired.add(pool_types.POOL_TYPE_SUPPORTED)
    return retired


def _created(meta: Mapping[str, Any]) -> datetime | None:
    """The policy's creationTimestamp: totals count from there."""
    try:
        return datetime.fromisoformat(str(meta["creationTimestamp"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def status_figures(o: PoolObservation) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "poolStatus": o.pool_status,
        "workers": {"online": o.workers_online, "offline": o.workers_offline},
        "runs": {"late": o.late, "pending": o.pending, "running": o.running},
    }
    if o.server_version:
        figures["prefectVersion"] = o.server_version
    return figures


async def _auth_header(spec: PolicySpec, namespace: str, secrets: SecretReader) -> str | None:
    auth = spec.prefect.auth
    if auth is None:
        return None
    if auth.api_key_secret_ref is not None:
        ref = auth.api_key_secret_ref
        return f"Bearer {await read_secret_for(secrets, namespace, ref.name, ref.key, Use.API_KEY)}"
    if auth.basic_auth_secret_ref is not None:
        ref = auth.basic_auth_secret_ref
        value = await read_secret_for(secrets, namespace, ref.name, ref.key, Use.BASIC_AUTH)
        return "Basic " + base64.b64encode(value.encode()).decode()
    return None


def _client_for(
    spec: PolicySpec, auth_header: str | None, http: httpx.AsyncClient | PrefectHttp, runtime: PolicyRuntime
) -> PrefectClient:
    """Reuse the policy's client until its URL, credentials or timeout change."""
    digest = hashlib.sha256(f"{spec.prefect.api_url}\n{auth_header}\n{spec.prefect.request_timeout}".encode()).hexdigest()
    if runtime.client is None or runtime.client_key != digest:
        runtime.client = PrefectClient(
            http, spec.prefect.api_url, auth_header=auth_header, timeout=spec.request_timeout_seconds
        )
        runtime.client_key = digest
    return runtime.client


def _describe(exc: ValidationError) -> str:
    """Field paths and problems only: pydantic's default text echoes input values."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "spec"
        problems.append(f"spec.{path}: {err['msg']}")
    return "Invalid spec: " + "; ".join(problems[:5])
