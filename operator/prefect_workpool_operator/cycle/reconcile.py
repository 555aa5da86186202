"""One reconcile cycle of one policy, without kopf: body in, status patch and Events out.

    observe (cycle/observe.py) → decide (core.plan.plan_cycle) → act (cycle/act.py) → settle (core.plan) → report

The kopf glue (``handlers/policy.py``) only decides *when* to call ``run_cycle`` and applies
what it returns (status only on change, ``core.report``). Keeping this free of kopf
makes the cycle testable against real servers with nothing but the clients it needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import httpx
from pydantic import ValidationError

from prefect_workpool_operator.cycle.act import act
from prefect_workpool_operator.cycle.act_recovery import write_batches
from prefect_workpool_operator.cycle.clients import AwsConnection, PrefectConnection
from prefect_workpool_operator.core import claims, health, recovery_plan, scaling, stale, stale_plan, summary
from prefect_workpool_operator.core.conditions import Condition, changed_conditions, format_time, merge_conditions, unobserved
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.health import Failure
from prefect_workpool_operator.core.log_gate import LogGate
from prefect_workpool_operator.core.plan import Event, Memory, Observation, Outcome, condition_events, plan_cycle, retired_conditions, settle, unobserved_plan
from prefect_workpool_operator.core.recovery_plan import WriteOutcome, recovery_rules
from prefect_workpool_operator.kube.api import SecretReader
from prefect_workpool_operator.schema.models import PolicySpec, StaleRunsSpec
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from prefect_workpool_operator.cycle.observe import ReadCache, observe_policy
from prefect_workpool_operator.cycle.recovery import InfrastructureCheck, observe_stale_runs
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.http import PrefectHttp

log = logging.getLogger(__name__)


@dataclass
class CycleOutcome:
    status: dict[str, Any]
    events: list[Event]
    spec: PolicySpec | None = None


@dataclass
class PolicyRuntime:
    """What a policy keeps between cycles, in memory (kopf's per-object memo)."""

    prefect: PrefectConnection = field(default_factory=PrefectConnection)
    ecs: AwsConnection = field(default_factory=AwsConnection)
    reads: ReadCache = field(default_factory=ReadCache)  # what observe remembers to read less
    scaling_memory: scaling.ScalingMemory = field(default_factory=scaling.ScalingMemory)  # stabilization, cooldowns
    published: Mapping[str, Any] | None = None  # the last published datum's figure
    last_generation: int | None = None
    next_start: float | None = None  # epoch seconds (core.schedule), set by the kopf glue
    cycles_run: int = 0  # cycles started in this process: the first is cold (nothing read yet)
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
    runtime.reads.autoscaling.restore(f"{meta.get('namespace')}/{meta.get('name')}", body.get("status"))

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
            conditions, figures, acted = await _cycle(spec, meta, http=http, secrets=secrets, runtime=runtime, now=now)

    retired = retired_conditions(spec)
    conditions += unobserved(previous, conditions, retired, f"{conditions[0].reason}. {conditions[0].message}")
    finished = max(now, datetime.now(timezone.utc))  # the cycle's end, as documented
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous, conditions, now, generation, drop=retired),
        "lastReconcileTime": format_time(finished),
        **figures,
    }
    status["brief"] = summary.summarize(spec, conditions, {**(body.get("status") or {}), **figures})
    if stale.STALE_RUNS_RECOVERED in retired:
        status["staleRuns"] = None
    if scaling.SCALING in retired:
        status["scaling"] = None
    if conditions[0].status == "True":
        runtime.log_gate.clear()
    events = condition_events(changed_conditions(previous, conditions), covered={e.covers for e in acted})
    return CycleOutcome(status=status, events=events + acted, spec=spec)


async def _cycle(
    spec: PolicySpec,
    meta: Mapping[str, Any],
    *,
    http: httpx.AsyncClient | PrefectHttp,
    secrets: SecretReader,
    runtime: PolicyRuntime,
    now: datetime,
) -> tuple[list[Condition], dict[str, Any], list[Event]]:
    namespace = meta.get("namespace", "")
    policy = f"{namespace}/{meta.get('name')}"
    if spec.suspend:
        return health.suspended_conditions(), {}, []
    try:
        observed = await observe_policy(
            spec, namespace=namespace, generation=meta.get("generation"), policy=policy, created=_created(meta),
            secrets=secrets, http=http, prefect=runtime.prefect, aws=runtime.ecs, cache=runtime.reads, now=now,
        )
    except OperatorError as exc:
        runtime.log_failure(policy, f"{exc.reason}: {exc.message}", now)
        # Fail static: keep the last figures rather than report zeros we did not see.
        return unobserved_plan(spec, exc.as_failure()), {}, []

    observation = observed.observation
    memory = Memory(scaling=runtime.scaling_memory, observations=runtime.reads.recovery.observations,
                    published=runtime.published)
    plan = plan_cycle(spec, observation, memory, now=now, policy=policy)
    outcome = await act(plan, observation, prefect=observed.prefect, aws=observed.aws, pool=spec.prefect.work_pool,
                        recovery=runtime.reads.recovery, now=now, autoscaling=runtime.reads.autoscaling)
    settled = settle(spec, plan, outcome, now=now)
    runtime.scaling_memory = settled.memory.scaling
    runtime.published = settled.memory.published
    runtime.reads.recovery.observations = settled.memory.observations
    for failure in _recovery_failures(observation, outcome):
        runtime.log_failure(policy, f"recovery: {failure.reason}: {failure.message}", now)
    return settled.conditions, settled.figures, settled.events


@dataclass
class RecoveryOutcome:
    condition: Condition
    figures: dict[str, Any]
    last_recovery: dict[str, Any] | None = None
    event_message: str | None = None  # set when the cycle changed runs
    warning: str | None = None  # set when runs were changed despite a live claimer (opt-in)
    writes: int = 0


async def recover_stale_runs(
    client: PrefectClient,
    spec: StaleRunsSpec,
    *,
    pool: str,
    queues: list[str],
    policy: str,
    online_workers: frozenset[str],
    dry_run: bool,
    memory: RecoveryMemory,
    now: datetime,
    interval: timedelta = timedelta(seconds=30),
    counting_since: datetime | None = None,
    infrastructure_check: InfrastructureCheck | None = None,
    pending_observed: int | None = None,
) -> RecoveryOutcome:
    """Recovery alone, observe → decide → act (benchmarks and recovery tests; the cycle
    runs the same steps inside ``run_cycle``). Raises ``PrefectError`` when Prefect fails."""
    reading = await observe_stale_runs(
        client, spec, pool=pool, queues=queues, policy=policy, online_workers=online_workers, memory=memory,
        now=now, interval=interval, counting_since=counting_since, infrastructure_check=infrastructure_check,
        pending_observed=pending_observed,
    )
    rules = recovery_rules(spec, interval)
    plan = stale_plan.plan_recovery(list(reading.runs), claimers=dict(reading.claimers),
                               infrastructure=dict(reading.infrastructure), rules=rules,
                               observations=memory.observations, now=now, looked_at=set(reading.looked_at))
    written = WriteOutcome()
    if not dry_run and plan.to_write:
        written = await write_batches(client, recovery_plan.write_batches(plan, rules, policy), reading, memory, now)
    condition = stale_plan.recovery_condition(plan, rules, dry_run=dry_run, failed=written.failed)
    total = memory.total_requeued or 0
    figures = recovery_plan.figures(plan, written.recovered, written.moved_on, dry_run, total)
    news = recovery_plan.recovery_news(plan, written, now)
    if news is None:
        return RecoveryOutcome(condition, figures, writes=written.writes)
    return RecoveryOutcome(condition, figures, last_recovery=news.last_recovery, event_message=news.event_message,
                           warning=news.warning, writes=written.writes)


def _recovery_failures(observation: Observation, outcome: Outcome) -> list[Failure]:
    failures = [observation.stale.failure if observation.stale else None, outcome.recovery_failure]
    return [f for f in failures if f is not None]


def _created(meta: Mapping[str, Any]) -> datetime | None:
    """The policy's creationTimestamp: totals count from there."""
    try:
        return datetime.fromisoformat(str(meta["creationTimestamp"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def _describe(exc: ValidationError) -> str:
    """Field paths and problems only: pydantic's default text echoes input values."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "spec"
        problems.append(f"spec.{path}: {err['msg']}")
    return "Invalid spec: " + "; ".join(problems[:5])
