"""Properties of one cycle's plan (core.plan), on plain data: no server, no clock but the one given.

- scaling stays within [minWorkers, maxWorkers] and moves at most one step limit per cycle
  (from inside the bounds), and never down inside the stabilization window;
- fail static: no fresh data means no write;
- the plan is pure (the memory it is given is left as it was) and idempotent: once its
  writes are done, observing the world they left gives a plan with no write.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_workpool_operator.core import aws_scaling, health, scaling, stale
from prefect_workpool_operator.core.plan import Memory, Observation, Outcome, StaleReading, plan_cycle, settle, \
    unobserved_plan
from prefect_workpool_operator.core.recovery_plan import WriteOutcome
from prefect_workpool_operator.core.scaling_plan import EcsReading
from prefect_workpool_operator.core.stale import Claimer, InfraReading, Infrastructure, PendingRun
from prefect_workpool_operator.schema.models import PolicySpec

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
INTERVAL = timedelta(seconds=30)
TEMPLATE_VARIABLE = "match_latest_revision_in_family"


def spec(**scaling_fields: Any) -> PolicySpec:
    return PolicySpec.model_validate({
        "prefect": {"apiUrl": "http://prefect.test/api", "workPool": "pool"},
        "interval": "30s",
        "ecs": {"region": "us-east-1", "cluster": "c", "service": "workers"},
        "scaling": {"mode": "DesiredCount", **scaling_fields},
    })


def template(value: bool) -> dict[str, Any]:
    return {"job_configuration": {}, "variables": {"properties": {TEMPLATE_VARIABLE: {"type": "boolean",
                                                                                       "default": value}}}}


def pool(late: int, pending: int = 0, base_job_template: dict[str, Any] | None = None) -> health.PoolObservation:
    return health.PoolObservation("READY", 1, 0, late, pending, 0, pool_type="ecs",
                                  base_job_template=base_job_template)


def ecs(desired: int | None) -> EcsReading:
    service = None if desired is None else scaling.ServiceCounts(desired, desired)
    return EcsReading("us-east-1", service)


BOUNDS = st.tuples(st.integers(0, 8), st.integers(0, 8)).map(sorted)


@settings(max_examples=300, deadline=None)
@given(bounds=BOUNDS, step_up=st.integers(1, 5), step_down=st.integers(1, 5), late=st.integers(0, 200),
       desired=st.integers(0, 12), per_worker=st.integers(1, 10))
def test_scaling_stays_in_bounds_and_steps(bounds: list[int], step_up: int, step_down: int, late: int, desired: int,
                                           per_worker: int) -> None:
    low, high = bounds
    policy = spec(minWorkers=low, maxWorkers=high, maxStepUp=step_up, maxStepDown=step_down,
                  backlogPerWorker=per_worker, scaleDownStabilization="0s")
    plan = plan_cycle(policy, Observation(pool(late), ecs(desired)), Memory(), now=NOW, policy="ns/p")
    if plan.scale is None:
        return
    target = plan.scale.target
    assert low <= target <= high
    if low <= desired <= high:  # bounds beat pacing only from outside the bounds
        assert -step_down <= target - desired <= step_up


@settings(max_examples=200, deadline=None)
@given(peak=st.integers(1, 50), later=st.lists(st.integers(0, 50), min_size=1, max_size=8),
       gaps=st.lists(st.integers(1, 37), min_size=8, max_size=8))  # 8 × 37 s < the 5 min window
def test_never_down_inside_the_stabilization_window(peak: int, later: list[int], gaps: list[int]) -> None:
    """After a peak, the count does not fall below it until the window (5m) has passed."""
    policy = spec(minWorkers=0, maxWorkers=10, backlogPerWorker=1, maxStepUp=10, maxStepDown=10,
                  scaleDownStabilization="5m")
    memory, desired, clock = Memory(), 0, NOW
    desired, memory = _cycle(policy, peak, desired, memory, clock)
    high = desired
    for late, gap in zip(later, gaps):
        clock += timedelta(seconds=gap)
        assert clock - NOW < timedelta(minutes=5)
        plan = plan_cycle(policy, Observation(pool(late), ecs(desired)), memory, now=clock, policy="ns/p")
        assert plan.scale is None or plan.scale.target >= high
        desired, memory = _apply(policy, plan, desired, clock)
        high = max(high, desired)


@settings(max_examples=100, deadline=None)
@given(late=st.integers(0, 100), desired=st.integers(0, 10))
def test_fail_static_without_data(late: int, desired: int) -> None:
    policy = spec(minWorkers=0, maxWorkers=10)
    unknown_service = plan_cycle(policy, Observation(pool(late), ecs(None)), Memory(), now=NOW, policy="ns/p")
    assert unknown_service.writes == 0
    failed_read = EcsReading("us-east-1", read_failure=health.Failure("Throttled", "DescribeServices was throttled"))
    ecs_down = plan_cycle(policy, Observation(pool(late), failed_read), Memory(), now=NOW, policy="ns/p")
    assert ecs_down.writes == 0 and ecs_down.conditions[0].status == "False"
    prefect_down = unobserved_plan(policy, health.Failure(health.UNREACHABLE, "connection refused"))
    assert any(c.type == scaling.SCALING and c.reason == scaling.HOLDING for c in prefect_down)


@settings(max_examples=200, deadline=None)
@given(late=st.integers(0, 100), desired=st.integers(0, 12), held=st.booleans())
def test_the_plan_is_pure_and_idempotent(late: int, desired: int, held: bool) -> None:
    """The same observation and memory give the same plan; once its writes are done,
    the world they leave asks for none."""
    policy = PolicySpec.model_validate({**spec(minWorkers=1, maxWorkers=8, maxStepUp=20, maxStepDown=20,
                                               scaleDownStabilization="0s").model_dump(by_alias=True),
                                        "jobTemplate": {"variables": {TEMPLATE_VARIABLE: True}}})
    memory = Memory()
    before = copy.deepcopy(memory)
    observed = Observation(pool(late, base_job_template=template(held)), ecs(desired))
    first = plan_cycle(policy, observed, memory, now=NOW, policy="ns/p")
    assert plan_cycle(policy, observed, memory, now=NOW, policy="ns/p") == first
    assert memory == before
    desired, memory = _apply(policy, first, desired, NOW)
    after = Observation(pool(late, base_job_template=template(True)), ecs(desired))
    second = plan_cycle(policy, after, memory, now=NOW + INTERVAL, policy="ns/p")
    assert second.writes == 0, second


def test_recovery_writes_once_then_nothing() -> None:
    """A run confirmed gone is written once; the next listing no longer holds it."""
    policy = PolicySpec.model_validate({"prefect": {"apiUrl": "http://prefect.test/api", "workPool": "pool"},
                                        "staleRuns": {"pendingTimeout": "10m"}})
    run = PendingRun("r1", NOW - timedelta(minutes=20), claimer="w1")
    gone = StaleReading((run,), {"r1": Claimer.OFFLINE}, {"r1": InfraReading(Infrastructure.NOT_CHECKED)},
                        frozenset({"r1"}))
    memory = Memory()
    first = plan_cycle(policy, Observation(pool(0), stale=gone), memory, now=NOW, policy="ns/p")
    assert first.writes == 0  # seen recoverable once: the second reading confirms
    confirm = plan_cycle(policy, Observation(pool(0), stale=gone), first.memory, now=NOW + INTERVAL, policy="ns/p")
    assert [b.run_ids for b in confirm.batches] == [("r1",)]
    written = WriteOutcome()
    written.add(stale.RESCHEDULE, ["r1"], 0, 0, 1)
    settled = settle(policy, confirm, Outcome(recovery=written), now=NOW + INTERVAL)
    assert settled.figures["staleRuns"]["recovered"] == 1
    assert plan_cycle(policy, Observation(pool(0), stale=StaleReading()), settled.memory,
                      now=NOW + 2 * INTERVAL, policy="ns/p").writes == 0


def _cycle(policy: PolicySpec, late: int, desired: int, memory: Memory, now: datetime) -> tuple[int, Memory]:
    return _apply(policy, plan_cycle(policy, Observation(pool(late), ecs(desired)), memory, now=now, policy="ns/p"),
                  desired, now)


def _apply(policy: PolicySpec, plan: Any, desired: int, now: datetime) -> tuple[int, Memory]:
    """The world after the plan's writes went through, and the memory to keep."""
    outcome = Outcome()
    if plan.scale is not None:
        desired = plan.scale.target
        outcome.scaled = scaling.ServiceCounts(desired, desired)
    if plan.template is not None:
        outcome.template_reread = plan.template.template
    return desired, settle(policy, plan, outcome, now=now).memory


def _managed_world(reading: aws_scaling.Reading, plan: Any) -> aws_scaling.Reading:
    """AWS after the plan's managed writes went through (what act records as written)."""
    target, policies, alarms = reading.observed.target, list(reading.observed.policies or ()), \
        list(reading.observed.alarms or ())
    owns = reading.owns_target
    for a in plan.managed.actions if plan.managed else ():
        if a.verb == "register_target":
            target, owns = a.target, owns or a.why == "create"
        elif a.verb == "put_policy":
            policies = [p for p in policies if p.name != a.name] + [a.policy]
        elif a.verb == "put_alarm":
            alarms = [x for x in alarms if x.name != a.name] + [replace(a.alarm, actions=("",))]
        elif a.verb == "delete_alarm":
            alarms = [x for x in alarms if x.name != a.name]
        elif a.verb == "delete_policy":
            policies = [p for p in policies if p.name != a.name]
        elif a.verb == "deregister_target":
            target, owns = None, False
    managed = plan.managed is not None and plan.managed.desired is not None
    return replace(reading, observed=aws_scaling.Observed(target, tuple(policies), tuple(alarms)), owns_target=owns,
                   managed=managed or (reading.managed and plan.managed is None))


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(["TargetTracking", "StepScaling"]), late=st.integers(0, 50),
       bounds=BOUNDS, after=st.sampled_from(["TargetTracking", "StepScaling", "CloudWatchMetric", "DesiredCount"]))
def test_managed_modes_plan_purely_then_settle_to_no_writes(mode: str, late: int, bounds: list[int],
                                                            after: str) -> None:
    """Created once; then only the metric is written; a switch removes ours, then nothing."""
    policy = spec(mode=mode, minWorkers=bounds[0], maxWorkers=bounds[1])
    reading = aws_scaling.Reading("prefectops-ns-p", "ns/p", aws_scaling.Observed(None, (), ()),
                                  resource_id="service/c/workers")
    observed = Observation(pool(late), EcsReading("us-east-1", autoscaling=reading))
    first = plan_cycle(policy, observed, Memory(), now=NOW, policy="ns/p")
    assert first == plan_cycle(policy, observed, Memory(), now=NOW, policy="ns/p")  # pure
    assert first.managed is not None and {a.why for a in first.managed.actions} == {"create"}
    assert first.metric is not None and first.metric.series[0].value == late
    reading = _managed_world(reading, first)
    steady = plan_cycle(policy, Observation(pool(late), EcsReading("us-east-1", autoscaling=reading)), Memory(),
                        now=NOW, policy="ns/p")
    assert steady.managed is not None and steady.managed.actions == () and steady.writes == 1  # PutMetricData only

    switched = spec(mode=after, minWorkers=bounds[0], maxWorkers=bounds[1])
    ecs_reading = EcsReading("us-east-1", scaling.ServiceCounts(1, 1), autoscaling=reading,
                             autoscaling_target=True)  # our own target: no Conflict for DesiredCount
    plan = plan_cycle(switched, Observation(pool(late), ecs_reading), Memory(), now=NOW, policy="ns/p")
    if after == mode:
        assert plan.managed is not None and plan.managed.actions == ()
        return
    assert plan.managed is not None and plan.managed.actions
    # Ours go, the new mode's come; the target stays ours (its bounds may differ: TargetTracking's minimum is 1).
    assert all(a.why in ("create", "remove") or a.verb == "register_target" for a in plan.managed.actions)
    if after in aws_scaling.MANAGED_MODES:
        assert not any(a.verb == "deregister_target" for a in plan.managed.actions)
    assert all(a.name.startswith("prefectops-ns-p-") or a.verb.endswith("target") for a in plan.managed.actions)
    conditions = {c.type: c for c in plan.conditions}
    assert conditions[scaling.SCALING].reason != "Conflict"
