"""Managed Application Auto Scaling resources, on plain data: what is wanted, and what to do about what is there."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, strategies as st

from prefect_workpool_operator.core import aws_scaling as core
from prefect_workpool_operator.core.aws_scaling import Alarm, Inputs, Observed, Policy, Target

PREFIX = core.name_prefix("ns", "p")
BASE = Inputs(mode="StepScaling", cluster="c", service="s", min_workers=0, max_workers=8, backlog_per_worker=5,
              scale_out_cooldown=0, scale_in_cooldown=60, scale_down_stabilization=300, max_step_down=2,
              steps=((1, 1), (5, 3)), metric_namespace="Prefect", metric_name="BacklogRuns", pool="pool")
NOTHING = Observed(None, (), ())


def as_applied(desired: core.Desired, owner_arn: str = "arn:") -> Observed:
    """What AWS shows once everything desired exists (AWS adds keys of its own)."""
    policies = tuple(replace(p, arn=owner_arn + p.name, config={**p.config, "AddedByAws": True})
                     for p in desired.policies)
    alarms = tuple(replace(a, actions=(owner_arn + a.policy,), params={**a.params, "StateValue": "OK"})
                   for a in desired.alarms)
    return Observed(desired.target, policies, alarms)


def test_step_scaling_wants_the_seed_steps_on_the_raw_backlog() -> None:
    d = core.desired_resources(BASE, PREFIX)
    assert d.target == Target("service/c/s", 0, 8)
    out = d.policies[0]
    assert out.config["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 4.0, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": 4.0, "ScalingAdjustment": 3}]
    high, low = d.alarms
    assert high.params["Threshold"] == 1.0 and high.params["TreatMissingData"] == "notBreaching"
    assert low.params["EvaluationPeriods"] == 5 and low.params["TreatMissingData"] == "notBreaching"
    assert d.note == ""


def test_target_tracking_divides_the_named_queues_by_running_tasks_and_starts_at_one() -> None:
    d = core.desired_resources(replace(BASE, mode="TargetTracking", queues=("a", "b")), PREFIX)
    assert d.target.min_capacity == 1 and "cannot scale from zero" in d.note
    metrics = d.policies[0].config["CustomizedMetricSpecification"]["Metrics"]
    assert metrics[-1]["Expression"] == "(q0 + q1) / tasks"
    assert metrics[1]["MetricStat"]["Metric"]["Dimensions"] == [{"Name": "WorkPool", "Value": "pool"},
                                                               {"Name": "WorkQueue", "Value": "b"}]
    assert d.alarms == ()  # target tracking's alarms are AWS's


def test_created_from_nothing_then_steady() -> None:
    d = core.desired_resources(BASE, PREFIX)
    plan = core.plan(d, NOTHING, prefix=PREFIX, owns_target=False)
    assert [(a.verb, a.why) for a in plan.actions] == [
        ("register_target", "create"), ("put_policy", "create"), ("put_policy", "create"),
        ("put_alarm", "create"), ("put_alarm", "create")]
    assert core.plan(d, as_applied(d), prefix=PREFIX, owns_target=True).actions == ()


def test_drift_is_named() -> None:
    d = core.desired_resources(BASE, PREFIX)
    seen = as_applied(d)
    seen = replace(seen, target=Target("service/c/s", 0, 20))
    plan = core.plan(d, seen, prefix=PREFIX, owns_target=True)
    assert [(a.verb, a.why, a.detail) for a in plan.actions] == [
        ("register_target", "drift", "min/max 0/20 -> 0/8")]


def test_foreign_resources_are_a_conflict_unless_override() -> None:
    d = core.desired_resources(BASE, PREFIX)
    theirs = Observed(Target("service/c/s", 0, 3), (Policy("their-policy", "StepScaling", {}, "arn:x"),), ())
    held = core.plan(d, theirs, prefix=PREFIX, owns_target=False)
    assert held.actions == () and "not created by the operator" in (held.conflict or "")
    assert "their-policy" in (held.conflict or "")
    taken = core.plan(d, theirs, prefix=PREFIX, owns_target=False, on_conflict="Override")
    assert ("register_target", "drift") in [(a.verb, a.why) for a in taken.actions]
    assert all(a.name != "their-policy" for a in taken.actions)


def test_removal_touches_only_ours() -> None:
    d = core.desired_resources(BASE, PREFIX)
    seen = as_applied(d)
    seen = replace(seen, policies=seen.policies + (Policy("their-policy", "StepScaling", {}),),
                   alarms=seen.alarms + (Alarm("their-alarm", {}, ""),))
    removed = core.plan(None, seen, prefix=PREFIX, owns_target=True)
    assert {a.name for a in removed.actions} == {p.name for p in d.policies} | {a.name for a in d.alarms} | \
        {"service/c/s"}
    assert removed.actions[-1].verb == "deregister_target"  # policies go first
    kept = core.plan(None, seen, prefix=PREFIX, owns_target=False)
    assert all(a.verb != "deregister_target" for a in kept.actions)


def test_other_policies_prefix_is_not_ours() -> None:
    assert not core.is_ours(core.name_prefix("ns", "p2") + "-target", PREFIX)
    assert len(core.name_prefix("n" * 63, "x" * 253)) <= core.MAX_NAME


inputs = st.builds(
    Inputs, mode=st.sampled_from(["TargetTracking", "StepScaling"]), cluster=st.just("c"), service=st.just("s"),
    min_workers=st.integers(0, 5), max_workers=st.integers(5, 50), backlog_per_worker=st.integers(1, 20),
    scale_out_cooldown=st.integers(0, 600), scale_in_cooldown=st.integers(0, 600),
    scale_down_stabilization=st.integers(0, 900), max_step_down=st.integers(1, 5),
    steps=st.lists(st.tuples(st.integers(1, 100), st.integers(1, 10)), min_size=1, max_size=4,
                   unique_by=lambda s: s[0]).map(lambda s: tuple(sorted(s))),
    metric_namespace=st.just("Prefect"), metric_name=st.just("BacklogRuns"), pool=st.just("pool"),
    queues=st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3).map(tuple))


@given(inputs, inputs)
def test_after_the_plan_is_applied_nothing_is_left_to_do(before: Inputs, after: Inputs) -> None:
    """From any earlier spec's resources (ours), one plan reaches the new spec: the next plan is empty."""
    old = as_applied(core.desired_resources(before, PREFIX))
    new = core.desired_resources(after, PREFIX)
    plan = core.plan(new, old, prefix=PREFIX, owns_target=True)
    assert plan.conflict is None
    names = {a.name for a in plan.actions}
    assert len(names) == len(plan.actions)  # one action per resource
    assert core.plan(new, as_applied(new), prefix=PREFIX, owns_target=True).actions == ()
    gone = {a.name for a in plan.actions if a.why == "remove"}
    wanted = {p.name for p in new.policies} | {a.name for a in new.alarms}
    assert gone == ({p.name for p in old.policies or ()} | {a.name for a in old.alarms or ()}) - wanted
