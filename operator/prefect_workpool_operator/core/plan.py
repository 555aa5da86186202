"""One cycle's decision: spec + observation + clock + memory → one plan; then, from what
the plan's writes did, the conditions, figures and Events the cycle reports.

    observe (cycle/observe.py)  →  plan_cycle (here)  →  act (cycle/act.py)  →  settle (here)  →  report

``plan_cycle`` is pure: it reads the memory it is given and returns the memory to keep,
so the same observation and memory always give the same plan. Each feature's rule
lives in its own core module (``scaling``, ``stale``, ``job_template``, ``pool_types``,
``health``); this module only composes them. When several steps fail, Ready names the
first in cycle order (pool type, AWS, recovery, then the writes); each feature's own
condition names its own failure.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Mapping

from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.core import aws_scaling, health, job_template, pool_types, scaling, stale, stale_plan
from prefect_workpool_operator.core.autoscaling_plan import ManagedStep, plan_release, settle_managed
from prefect_workpool_operator.core.conditions import NOT_CHECKED, Condition
from prefect_workpool_operator.core.health import Failure, PoolObservation
from prefect_workpool_operator.core.queue_backlog import BacklogReading
from prefect_workpool_operator.core.recovery_plan import Batch, WriteOutcome, figures as recovery_figures, recovery_news, recovery_rules, write_batches
from prefect_workpool_operator.core.scaling_plan import AWS_CONNECTED, EcsReading, MetricDatum, ScaleChange, ScalingStep, aws_condition, \
    ecs_failed, holding, plan_workers, scaled
from prefect_workpool_operator.core.stale import Claimer, InfraReading, PendingRun
from prefect_workpool_operator.core.stale_plan import Observations, RecoveryPlan


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str
    covers: str | None = None  # the condition type whose change this Event already announces


@dataclass(frozen=True)
class StaleReading:
    """The stale PENDING runs as this cycle saw them; the runs in the lookup window
    (``looked_at``) come with their claims, requeue counts, claimers and ECS readings."""

    runs: tuple[PendingRun, ...] = ()
    claimers: Mapping[str, Claimer] = field(default_factory=dict)
    infrastructure: Mapping[str, InfraReading] = field(default_factory=dict)
    looked_at: frozenset[str] = frozenset()
    total_requeued: int = 0
    failure: Failure | None = None  # a Prefect read failed: recovery stops this cycle


@dataclass(frozen=True)
class Observation:
    """Everything one cycle read, before deciding anything."""

    pool: PoolObservation
    ecs: EcsReading | None = None  # None: no spec.ecs, or the pool type has no ECS side
    stale: StaleReading | None = None  # None: no spec.staleRuns, or the pool type has no recovery
    backlog: BacklogReading | None = None  # runs due soon, the backlog per queue (when scaling asks for them)


@dataclass(frozen=True)
class Memory:
    """What the decision needs from earlier cycles (the operator keeps it in memory)."""

    scaling: scaling.ScalingMemory = field(default_factory=scaling.ScalingMemory)
    observations: Observations = field(default_factory=Observations)  # the two-reading rule
    published: Mapping[str, Any] | None = None  # the last published datum's figure (its time moves with its value)


@dataclass(frozen=True)
class Plan:
    """The cycle's writes, and what it reports if they all go through."""

    conditions: tuple[Condition, ...]
    figures: Mapping[str, Any]
    events: tuple[Event, ...] = ()
    failure: Failure | None = None  # a step that failed before any write: Ready=False
    scaling: ScalingStep | None = None
    recovery: RecoveryPlan | None = None
    recovery_rules: stale.RecoveryRules | None = None
    batches: tuple[Batch, ...] = ()  # guarded state changes, ≤ 50 runs each
    template: job_template.TemplatePlan | None = None  # set when the template is to be written
    ecs: EcsReading | None = None  # AwsConnected is settled from it and the writes
    managed: ManagedStep | None = None  # Application Auto Scaling / alarm writes, or removals of ours
    memory: Memory = field(default_factory=Memory)  # to keep (settle swaps in the applied scaling memory)

    @property
    def scale(self) -> ScaleChange | None:
        return self.scaling.change if self.scaling else None

    @property
    def metric(self) -> MetricDatum | None:
        return self.scaling.metric if self.scaling else None

    @property
    def writes(self) -> int:
        managed = len(self.managed.actions) if self.managed else 0
        return (self.scale is not None) + (self.metric is not None) + (self.template is not None) + len(self.batches) \
            + managed


@dataclass
class Outcome:
    """What act() did with a plan's writes."""

    scaled: scaling.ServiceCounts | None = None  # the service as UpdateService left it
    scaling_failure: Failure | None = None  # UpdateService or PutMetricData failed
    recovery: WriteOutcome = field(default_factory=WriteOutcome)
    recovery_failure: Failure | None = None
    template_reread: dict[str, Any] | None = None
    template_failure: Failure | None = None
    aws_failure: Failure | None = None  # the AWS client's last failure this cycle (infrastructure checks too)
    managed_done: tuple[aws_scaling.Action, ...] = ()  # the plan's managed writes that went through
    managed_after: aws_scaling.Reading | None = None  # the managed resources as those writes left them


@dataclass(frozen=True)
class Settled:
    conditions: list[Condition]
    figures: dict[str, Any]
    events: list[Event]
    memory: Memory


def plan_cycle(spec: PolicySpec, observed: Observation, memory: Memory, *, now: datetime, policy: str) -> Plan:
    """Decide the whole cycle from what was observed."""
    conn = spec.prefect
    pool = observed.pool
    conditions = health.health_conditions(pool, None, pool=conn.work_pool, api_url=conn.api_url)
    figures: dict[str, Any] = status_figures(pool)
    failures: list[Failure] = []
    features = pool_types.features_for(pool.pool_type)
    fit = pool_types.pool_type_condition(
        features, pool=conn.work_pool, stale_runs=spec.stale_runs is not None, ecs=spec.ecs is not None,
        scaling=spec.scaling is not None, job_template=spec.job_template is not None,
    )
    if pool_types.POOL_TYPE_SUPPORTED not in retired_conditions(spec):
        conditions.append(fit)
    if fit.status != "True":
        failures.append(Failure(fit.reason, fit.message))

    step = None
    managed = None
    new_memory = memory
    ecs = observed.ecs if features.ecs and spec.ecs is not None else None
    if ecs is not None and spec.ecs is not None:
        if ecs.credentials_failure is not None:
            failures.append(ecs.credentials_failure)
        elif spec.scaling is not None:
            step = plan_workers(spec.scaling, spec.ecs, pool, ecs, memory.scaling, pool_name=conn.work_pool,
                                dry_run=spec.dry_run, now=now, backlog_reading=observed.backlog,
                                published=memory.published)
            managed = step.managed
            assert step.condition is not None
            conditions.append(step.condition)
            if step.figures is not None:
                figures["scaling"] = step.figures
            if step.failure is not None:
                failures.append(step.failure)
            new_memory = replace(new_memory, scaling=step.memory or memory.scaling, published=step.published)
        else:  # scaling removed: what the managed modes created goes too
            managed = plan_release(ecs.autoscaling, dry_run=spec.dry_run)

    recovery = rules = None
    batches: tuple[Batch, ...] = ()
    reading = observed.stale
    if spec.stale_runs is not None and features.recovery and reading is not None:
        if reading.failure is not None:
            message = f"Stale-run recovery stopped: {reading.failure.message}"
            failures.append(Failure(reading.failure.reason, message))
            conditions.append(Condition(stale.STALE_RUNS_RECOVERED, "False", reading.failure.reason, message))
        else:
            rules = recovery_rules(spec.stale_runs, spec.interval_delta)
            observations = copy.deepcopy(memory.observations)  # the caller's memory stays as it was
            recovery = stale_plan.plan_recovery(
                list(reading.runs), claimers=dict(reading.claimers), infrastructure=dict(reading.infrastructure),
                rules=rules, observations=observations, now=now, looked_at=set(reading.looked_at),
            )
            new_memory = replace(new_memory, observations=observations)
            conditions.append(stale_plan.recovery_condition(recovery, rules, dry_run=spec.dry_run))
            figures["staleRuns"] = recovery_figures(recovery, 0, 0, spec.dry_run, reading.total_requeued)
            if not spec.dry_run:
                batches = write_batches(recovery, rules, policy)

    template = None
    if spec.job_template is not None or (spec.stale_runs is not None and features.ecs):
        template, template_conditions = _plan_template(spec, pool, ecs_checks=features.ecs)
        conditions += template_conditions
    if ecs is not None:
        conditions.append(aws_condition(ecs.region, ecs.credentials_failure or ecs.read_failure))
    if not features.ecs or not features.recovery:
        conditions += _not_applicable(spec, features)
    return Plan(tuple(_ready(conditions, failures)), figures, (), failures[0] if failures else None,
                step, recovery, rules, batches, template, ecs, managed, new_memory)


def settle(spec: PolicySpec, plan: Plan, outcome: Outcome, *, now: datetime) -> Settled:
    """The plan's conditions, figures and Events once its writes are done (or failed)."""
    conditions = {c.type: c for c in plan.conditions}
    figures = dict(plan.figures)
    events = list(plan.events)
    failures = [plan.failure] if plan.failure else []
    memory = plan.memory
    step = plan.scaling
    if step is not None and (step.change is not None or step.metric is not None or step.managed is not None):
        if outcome.scaling_failure is not None:
            conditions[scaling.SCALING], failure = ecs_failed(outcome.scaling_failure)
            failures.append(failure)
            figures.pop("scaling", None)
        elif step.change is not None and outcome.scaled is not None:
            figures["scaling"] = scaled(step, outcome.scaled, now)
            memory = replace(memory, scaling=step.change.applied_memory)
            events.append(Event("Normal", step.change.reason, f"{step.change.service}: {step.change.message}",
                                covers=scaling.SCALING))
    if plan.managed is not None:  # after a failed write too: what went through is told
        _settle_managed(plan.managed, outcome, conditions, figures, events, failed=outcome.scaling_failure is not None)
    if plan.recovery is not None and plan.recovery_rules is not None:
        figures, events = _settle_recovery(spec, plan, outcome, conditions, figures, events, failures, now)
    if plan.template is not None:
        pool = spec.prefect.work_pool
        if outcome.template_failure is not None:
            condition = Condition(job_template.JOB_TEMPLATE_SYNCED, "False", outcome.template_failure.reason,
                                  f"Could not update the base job template: {outcome.template_failure.message}")
            failures.append(Failure(condition.reason, condition.message))
        else:
            condition = job_template.applied_condition(plan.template, outcome.template_reread, pool=pool) or \
                conditions[job_template.JOB_TEMPLATE_SYNCED]
            if condition.status == "True":
                events.append(Event("Normal", "JobTemplateRepaired", condition.message,
                                    covers=job_template.JOB_TEMPLATE_SYNCED))
        conditions[job_template.JOB_TEMPLATE_SYNCED] = condition
    if plan.ecs is not None:
        failure = plan.ecs.credentials_failure or plan.ecs.read_failure or outcome.scaling_failure or outcome.aws_failure
        conditions[AWS_CONNECTED] = aws_condition(plan.ecs.region, failure)
    return Settled(_ready(list(conditions.values()), failures), figures, events, memory)


def _settle_managed(step: ManagedStep, outcome: Outcome, conditions: dict[str, Condition], figures: dict[str, Any],
                    events: list[Event], *, failed: bool) -> None:
    condition, managed_figures, news = settle_managed(step, outcome.managed_done, outcome.managed_after or step.reading)
    if condition is not None and not failed:
        conditions[scaling.SCALING] = condition
        figures["scaling"] = {**figures.get("scaling", {}), **managed_figures}
    events += [Event(*e, covers=scaling.SCALING if condition is not None and not failed else None) for e in news]


def _settle_recovery(
    spec: PolicySpec, plan: Plan, outcome: Outcome, conditions: dict[str, Condition], figures: dict[str, Any],
    events: list[Event], failures: list[Failure], now: datetime,
) -> tuple[dict[str, Any], list[Event]]:
    recovery, rules, written = plan.recovery, plan.recovery_rules, outcome.recovery
    assert recovery is not None and rules is not None
    if outcome.recovery_failure is not None:
        message = f"Stale-run recovery stopped: {outcome.recovery_failure.message}"
        failures.append(Failure(outcome.recovery_failure.reason, message))
        conditions[stale.STALE_RUNS_RECOVERED] = Condition(stale.STALE_RUNS_RECOVERED, "False",
                                                            outcome.recovery_failure.reason, message)
        figures.pop("staleRuns", None)
        return figures, events
    total = int(figures["staleRuns"]["totalRecovered"]) + len(written.changed.get(stale.RESCHEDULE, []))
    conditions[stale.STALE_RUNS_RECOVERED] = stale_plan.recovery_condition(recovery, rules, dry_run=spec.dry_run,
                                                                            failed=written.failed)
    figures["staleRuns"] = recovery_figures(recovery, written.recovered, written.moved_on, spec.dry_run, total)
    news = recovery_news(recovery, written, now)
    if news is not None:
        figures["lastRecovery"] = news.last_recovery
        events.append(Event("Normal", "RunsRecovered", news.event_message, covers=stale.STALE_RUNS_RECOVERED))
        if news.warning:
            events.append(Event("Warning", "RecoveredDespiteLiveClaimer", news.warning))
    return figures, events


def unobserved_plan(spec: PolicySpec, failure: Failure) -> list[Condition]:
    """Prefect (or its credentials) could not be read: fail static, keep the last figures."""
    conn = spec.prefect
    conditions = health.health_conditions(None, failure, pool=conn.work_pool, api_url=conn.api_url)
    if spec.scaling is not None:
        conditions.append(holding("No fresh data from Prefect"))
    return conditions


def _ready(conditions: list[Condition], failures: list[Failure]) -> list[Condition]:
    """Ready is False with the first failure's reason when a step failed."""
    if failures and conditions and conditions[0].type == health.READY:
        conditions = [Condition(health.READY, "False", failures[0].reason, failures[0].message), *conditions[1:]]
    return conditions


def _plan_template(
    spec: PolicySpec, pool: PoolObservation, *, ecs_checks: bool
) -> tuple[job_template.TemplatePlan | None, list[Condition]]:
    declared = dict(spec.job_template.variables) if spec.job_template else {}
    conditions = []
    write = None
    if spec.job_template is not None:
        template_plan = job_template.plan_template(pool.base_job_template, declared)
        conditions.append(job_template.template_condition(template_plan, pool=spec.prefect.work_pool,
                                                          dry_run=spec.dry_run, declared=len(declared)))
        if template_plan.writable and not spec.dry_run:
            write = template_plan
    if ecs_checks:
        pending_timeout = spec.stale_runs.pending_timeout_delta if spec.stale_runs else None
        consistency = job_template.timeout_consistency(pending_timeout, pool.base_job_template, declared)
        if consistency is not None:
            conditions.append(consistency)
    return write, conditions


def _not_applicable(spec: PolicySpec, features: pool_types.Features) -> list[Condition]:
    """Features the pool's type does not fit say so, rather than keep an old value."""
    why = f"not applicable to a {features.pool_type!r} pool; nothing was done"
    conditions = []
    if spec.scaling is not None:
        conditions.append(Condition(scaling.SCALING, "False", pool_types.UNSUPPORTED_POOL_TYPE, f"Scaling {why}."))
    if spec.ecs is not None:
        conditions.append(Condition(AWS_CONNECTED, "Unknown", NOT_CHECKED, f"ECS {why}."))
    if spec.stale_runs is not None:
        conditions.append(Condition(job_template.CONFIG_CONSISTENT, "True", "NotApplicable",
                                    f"No ECS task start timeout for a {features.pool_type!r} pool."))
        if not features.recovery:
            conditions.append(Condition(stale.STALE_RUNS_RECOVERED, "False", pool_types.UNSUPPORTED_POOL_TYPE,
                                        f"Stale-run recovery {why}: no worker claims its runs."))
    return conditions


def retired_conditions(spec: PolicySpec | None) -> set[str]:
    """Conditions of features the spec no longer enables go away."""
    if spec is None:
        return set()
    retired = set()
    if spec.stale_runs is None:
        retired.add(stale.STALE_RUNS_RECOVERED)
    if spec.scaling is None:
        retired.add(scaling.SCALING)
    if spec.ecs is None:
        retired.add(AWS_CONNECTED)
    if spec.job_template is None:
        retired.add(job_template.JOB_TEMPLATE_SYNCED)
    if spec.stale_runs is None:
        retired.add(job_template.CONFIG_CONSISTENT)
    if spec.stale_runs is None and spec.ecs is None and spec.scaling is None and spec.job_template is None:
        retired.add(pool_types.POOL_TYPE_SUPPORTED)
    return retired


def condition_events(changed: list[Condition], covered: set[str | None]) -> list[Event]:
    """One Event per distinct news: Ready and PrefectConnected failing alike say it once,
    and conditions turning Unknown (input missing) add nothing to the cause's Event."""
    events: dict[tuple[str, str], Event] = {}
    for c in changed:
        if c.type in covered or c.status == "Unknown":  # an action's own Event already tells it
            continue
        events.setdefault((c.reason, c.message), Event("Normal" if c.status == "True" else "Warning", c.reason, c.message))
    return list(events.values())


def status_figures(o: PoolObservation) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "poolStatus": o.pool_status,
        "workers": {"online": o.workers_online, "offline": o.workers_offline},
        "runs": {"late": o.late, "pending": o.pending, "running": o.running},
    }
    if o.server_version:
        figures["prefectVersion"] = o.server_version
    return figures
