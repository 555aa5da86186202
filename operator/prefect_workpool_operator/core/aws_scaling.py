"""What the operator wants in Application Auto Scaling and CloudWatch, and what to do about what is there.

TargetTracking and StepScaling modes own, for one ECS service: the scalable target
(min/max from minWorkers/maxWorkers) and a scaling policy — target tracking on
backlog per running task, or step scaling on the raw backlog with two alarms the
operator owns. This module turns the spec into those resources (``desired_*``) and
compares them with what AWS reported (``plan``), on plain data.

Ownership. Policies and alarms are ours by name (``<prefix>-...``; AWS has no tags
on scaling policies). The scalable target has no name: it is ours when the operator
registered it, which the policy's status records (and the target carries the
``prefectops.dev/policy`` tag, for people). A target or policy we did not create
means a conflict: hands off (``Hold``) unless ``onConflict: Override``, which
updates the target's bounds but never deletes what is not ours.

Comparison, not re-put: only the keys we send are compared (AWS adds defaults), with
numbers compared as numbers, so a steady state makes no write at all.

Scale from zero. backlog ÷ running tasks has no value at 0 tasks, so target tracking
cannot start the first worker: TargetTracking registers MinCapacity ≥ 1 (a documented
minimum). StepScaling's alarm watches the raw backlog, so it scales from 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect_workpool_operator.schema.models import EcsTarget, ScalingSpec
from prefect_workpool_operator.core.durations import parse_duration

NAMESPACE = "ecs"
DIMENSION = "ecs:service:DesiredCount"
OWNER_TAG = "prefectops.dev/policy"
TASKS_NAMESPACE = "ECS/ContainerInsights"  # RunningTaskCount needs Container Insights on the cluster
TASKS_METRIC = "RunningTaskCount"
PERIOD = 60  # standard-resolution metrics: one-minute periods
MAX_NAME = 200

MANAGED_MODES = ("TargetTracking", "StepScaling")  # the spec's modes whose AWS resources the operator owns
TARGET_TRACKING, STEP_SCALING = "TargetTrackingScaling", "StepScaling"

# Reasons of the Scaling condition in the managed modes.
AUTOSCALING_READY = "AutoscalingReady"
AUTOSCALING_CHANGED = "AutoscalingChanged"
CONFLICT = "Conflict"
# Event reasons
CREATED = "AutoscalingCreated"
DRIFT_CORRECTED = "AutoscalingDriftCorrected"
REMOVED = "AutoscalingRemoved"


@dataclass(frozen=True)
class Inputs:
    """What the managed resources are made from (spec fields and where the service is)."""

    mode: str  # TargetTracking | StepScaling
    cluster: str  # name, not ARN
    service: str
    min_workers: int
    max_workers: int
    backlog_per_worker: int
    scale_out_cooldown: int  # seconds
    scale_in_cooldown: int
    scale_down_stabilization: int
    max_step_down: int
    steps: tuple[tuple[int, int], ...]  # (at least, add), increasing
    metric_namespace: str
    metric_name: str
    pool: str
    queues: tuple[str, ...] = ()  # follow these queues' series (sum); empty: the pool's series


@dataclass(frozen=True)
class Target:
    resource_id: str
    min_capacity: int
    max_capacity: int


@dataclass(frozen=True)
class Policy:
    name: str
    type: str
    config: Mapping[str, Any]  # the *ScalingPolicyConfiguration we send
    arn: str = ""
    alarms: tuple[str, ...] = ()  # alarms AWS attached (target tracking creates its own)


@dataclass(frozen=True)
class Alarm:
    name: str
    params: Mapping[str, Any]  # PutMetricAlarm parameters, except AlarmName and AlarmActions
    policy: str  # the policy (by name) its action invokes
    actions: tuple[str, ...] = ()  # observed AlarmActions (policy ARNs)
    state: str = ""


@dataclass(frozen=True)
class Desired:
    target: Target
    policies: tuple[Policy, ...]
    alarms: tuple[Alarm, ...]
    note: str = ""  # e.g. the TargetTracking minimum


@dataclass(frozen=True)
class Observed:
    """What AWS reported; ``None`` for a kind never read."""

    target: Target | None
    policies: tuple[Policy, ...] | None  # every policy on the service's target
    alarms: tuple[Alarm, ...] | None  # our alarms and the policies' own alarms


@dataclass(frozen=True)
class Action:
    verb: str  # register_target | put_policy | put_alarm | delete_alarm | delete_policy | deregister_target
    name: str
    why: str  # create | drift | remove | follow (an alarm whose policy was re-put)
    detail: str = ""
    target: Target | None = None
    policy: Policy | None = None
    alarm: Alarm | None = None


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()
    conflict: str | None = None
    foreign_policies: tuple[str, ...] = field(default=())


def resource_id(cluster: str, service: str) -> str:
    return f"service/{cluster}/{service}"


def name_prefix(namespace: str, name: str) -> str:
    """``prefectops-<namespace>-<name>``, shortened with a digest when too long."""
    prefix = f"prefectops-{namespace}-{name}"
    if len(prefix) <= MAX_NAME:
        return prefix
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:10]
    return f"{prefix[:MAX_NAME - 11]}-{digest}"


def is_ours(name: str, prefix: str) -> bool:
    return name.startswith(prefix + "-")


def _backlog_queries(i: Inputs) -> tuple[list[dict[str, Any]], str]:
    """Metric queries for the backlog the policy follows, and the expression that sums them."""
    series = [((("WorkPool", i.pool),), "backlog")] if not i.queues else \
        [((("WorkPool", i.pool), ("WorkQueue", q)), f"q{n}") for n, q in enumerate(i.queues)]
    queries = [{"Id": qid, "MetricStat": {"Metric": {
        "Namespace": i.metric_namespace, "MetricName": i.metric_name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in dims]}, "Stat": "Average"}, "ReturnData": False}
        for dims, qid in series]
    return queries, " + ".join(qid for _, qid in series)


def desired_resources(i: Inputs, prefix: str) -> Desired:
    rid = resource_id(i.cluster, i.service)
    if i.mode == "TargetTracking":
        floor = max(1, i.min_workers)
        note = "" if floor == i.min_workers else \
            "TargetTracking cannot scale from zero (backlog per task has no value at 0 tasks): MinCapacity is 1."
        queries, backlog = _backlog_queries(i)
        tasks = {"Id": "tasks", "MetricStat": {"Metric": {
            "Namespace": TASKS_NAMESPACE, "MetricName": TASKS_METRIC,
            "Dimensions": [{"Name": "ClusterName", "Value": i.cluster}, {"Name": "ServiceName", "Value": i.service}]},
            "Stat": "Average"}, "ReturnData": False}
        per_task = {"Id": "backlogpertask", "Expression": f"({backlog}) / tasks", "Label": "Backlog per running task",
                    "ReturnData": True}
        config = {"TargetValue": float(i.backlog_per_worker), "ScaleOutCooldown": i.scale_out_cooldown,
                  "ScaleInCooldown": i.scale_in_cooldown,
                  "CustomizedMetricSpecification": {"Metrics": [*queries, tasks, per_task]}}
        return Desired(Target(rid, floor, max(floor, i.max_workers)),
                       (Policy(f"{prefix}-target", TARGET_TRACKING, config),), (), note)

    first = i.steps[0][0]
    steps = []
    for n, (at_least, add) in enumerate(i.steps):
        step: dict[str, Any] = {"MetricIntervalLowerBound": float(at_least - first), "ScalingAdjustment": add}
        if n + 1 < len(i.steps):
            step["MetricIntervalUpperBound"] = float(i.steps[n + 1][0] - first)
        steps.append(step)
    out = Policy(f"{prefix}-step-out", STEP_SCALING, {
        "AdjustmentType": "ChangeInCapacity", "Cooldown": i.scale_out_cooldown, "MetricAggregationType": "Maximum",
        "StepAdjustments": steps})
    scale_in = Policy(f"{prefix}-step-in", STEP_SCALING, {
        "AdjustmentType": "ChangeInCapacity", "Cooldown": i.scale_in_cooldown, "MetricAggregationType": "Maximum",
        "StepAdjustments": [{"MetricIntervalUpperBound": 0.0, "ScalingAdjustment": -i.max_step_down}]})
    metric = _alarm_metric(i)
    # Missing data must never scale: notBreaching turns both alarms OK (no action) when no datum
    # arrives — the operator publishes nothing while Prefect cannot be read.
    common = {**metric, "TreatMissingData": "notBreaching", "ActionsEnabled": True}
    high = Alarm(f"{prefix}-backlog-high", {**common, "EvaluationPeriods": 1, "DatapointsToAlarm": 1,
                                            "Threshold": float(first),
                                            "ComparisonOperator": "GreaterThanOrEqualToThreshold"}, out.name)
    low_periods = max(1, math.ceil(i.scale_down_stabilization / PERIOD))
    low = Alarm(f"{prefix}-backlog-low", {**common, "EvaluationPeriods": low_periods, "DatapointsToAlarm": low_periods,
                                          "Threshold": 0.0, "ComparisonOperator": "LessThanOrEqualToThreshold"},
                scale_in.name)
    return Desired(Target(rid, i.min_workers, i.max_workers), (out, scale_in), (high, low))


def _alarm_metric(i: Inputs) -> dict[str, Any]:
    if not i.queues:
        return {"Namespace": i.metric_namespace, "MetricName": i.metric_name,
                "Dimensions": [{"Name": "WorkPool", "Value": i.pool}], "Statistic": "Maximum", "Period": PERIOD}
    queries, total = _backlog_queries(i)
    for q in queries:
        q["MetricStat"]["Period"], q["MetricStat"]["Stat"] = PERIOD, "Maximum"
    return {"Metrics": [*queries, {"Id": "backlog", "Expression": total, "Label": "Backlog", "ReturnData": True}]}


def matches(wanted: Any, seen: Any) -> bool:
    """``seen`` holds every key of ``wanted`` with an equal value (numbers as numbers, lists in order)."""
    if isinstance(wanted, Mapping):
        return isinstance(seen, Mapping) and all(k in seen and matches(v, seen[k]) for k, v in wanted.items())
    if isinstance(wanted, (list, tuple)):
        return isinstance(seen, (list, tuple)) and len(wanted) == len(seen) and all(map(matches, wanted, seen))
    if isinstance(wanted, bool) or isinstance(seen, bool):
        return wanted == seen
    if isinstance(wanted, (int, float)) and isinstance(seen, (int, float)):
        return float(wanted) == float(seen)
    return bool(wanted == seen)


def plan(desired: Desired | None, observed: Observed, *, prefix: str, owns_target: bool,
         on_conflict: str = "Hold") -> Plan:
    """The writes that bring AWS to ``desired`` (``None``: remove what is ours), or a conflict."""
    policies = observed.policies or ()
    foreign = tuple(sorted(p.name for p in policies if not is_ours(p.name, prefix)))
    if desired is None:
        return Plan(_removals(observed, prefix, owns_target), None, foreign)

    conflicts = []
    if observed.target is not None and not owns_target:
        conflicts.append(f"the scalable target {observed.target.resource_id} was not created by the operator")
    if foreign:
        conflicts.append(f"the service has scaling policies the operator did not create ({', '.join(foreign)})")
    conflict = " and ".join(conflicts) or None
    if conflict and on_conflict != "Override":
        return Plan((), conflict, foreign)

    actions: list[Action] = []
    want = desired.target
    seen = observed.target
    if seen is None:
        actions.append(Action("register_target", want.resource_id, "create",
                              f"min {want.min_capacity}, max {want.max_capacity}", target=want))
    elif (seen.min_capacity, seen.max_capacity) != (want.min_capacity, want.max_capacity):
        actions.append(Action("register_target", want.resource_id, "drift",
                              f"min/max {seen.min_capacity}/{seen.max_capacity} -> "
                              f"{want.min_capacity}/{want.max_capacity}", target=want))

    by_name = {p.name: p for p in policies}
    reput: set[str] = set()
    for p in desired.policies:
        have = by_name.get(p.name)
        if have is None or have.type != p.type or not matches(p.config, have.config):
            why = "create" if have is None else "drift"
            actions.append(Action("put_policy", p.name, why, "" if have is None else "its configuration changed",
                                  policy=p))
            reput.add(p.name)
    arns = {p.name: p.arn for p in policies}
    alarms = {a.name: a for a in observed.alarms or ()}
    for a in desired.alarms:
        have_alarm = alarms.get(a.name)
        if have_alarm is None:
            actions.append(Action("put_alarm", a.name, "create", alarm=a))
        elif not matches(a.params, have_alarm.params) or (a.policy not in reput
                                                           and arns.get(a.policy) not in have_alarm.actions):
            actions.append(Action("put_alarm", a.name, "drift", "its settings changed", alarm=a))
        elif a.policy in reput:
            # Re-put only if the policy's ARN changes (the caller checks after putting the policy).
            actions.append(Action("put_alarm", a.name, "follow", alarm=a))
    # Ours but no longer wanted (steps became fewer, mode switched between managed modes).
    wanted = {p.name for p in desired.policies} | {a.name for a in desired.alarms}
    for name in sorted(alarms):
        if is_ours(name, prefix) and name not in wanted:
            actions.append(Action("delete_alarm", name, "remove"))
    for name in sorted(by_name):
        if is_ours(name, prefix) and name not in wanted:
            actions.append(Action("delete_policy", name, "remove"))
    return Plan(tuple(actions), conflict, foreign)


def _removals(observed: Observed, prefix: str, owns_target: bool) -> tuple[Action, ...]:
    actions = [Action("delete_alarm", a.name, "remove") for a in observed.alarms or () if is_ours(a.name, prefix)]
    actions += [Action("delete_policy", p.name, "remove") for p in observed.policies or () if is_ours(p.name, prefix)]
    if owns_target and observed.target is not None:
        # Policies first: deregistering a target leaves its policies behind on some implementations.
        actions.append(Action("deregister_target", observed.target.resource_id, "remove", target=observed.target))
    return tuple(actions)


def describe(action: Action) -> str:
    what = {"register_target": "scalable target", "put_policy": "scaling policy", "put_alarm": "alarm",
            "delete_alarm": "alarm", "delete_policy": "scaling policy", "deregister_target": "scalable target"}
    verb = {"create": "created", "drift": "restored (changed outside the operator)", "remove": "removed",
            "follow": "pointed at its policy again"}[action.why]
    detail = f": {action.detail}" if action.detail else ""
    return f"{what[action.verb]} {action.name} {verb}{detail}"


def summarize(actions: Sequence[Action]) -> str:
    return "; ".join(describe(a) for a in actions)


# -- one cycle's view: the inputs from the spec, what observe read, what to report --------


def service_name(name_or_arn: str) -> str:
    """Application Auto Scaling resource ids use names, not ARNs."""
    return name_or_arn.rsplit("/", 1)[-1] if name_or_arn.startswith("arn:") else name_or_arn


def inputs_from(spec: ScalingSpec, ecs: EcsTarget, pool: str) -> Inputs:
    assert ecs.service is not None  # the managed modes need a service (CEL + model check)
    return Inputs(
        mode=spec.mode, cluster=service_name(ecs.cluster), service=service_name(ecs.service),
        min_workers=spec.min_workers, max_workers=spec.max_workers, backlog_per_worker=spec.backlog_per_worker,
        scale_out_cooldown=int(parse_duration(spec.scale_up_cooldown).total_seconds()),
        scale_in_cooldown=int(parse_duration(spec.scale_down_cooldown).total_seconds()),
        scale_down_stabilization=int(parse_duration(spec.scale_down_stabilization).total_seconds()),
        max_step_down=spec.max_step_down, steps=tuple((s.at_least, s.add) for s in spec.steps),
        metric_namespace=spec.metric_namespace, metric_name=spec.metric_name, pool=pool,
        queues=tuple(spec.work_queues))


@dataclass(frozen=True)
class Reading:
    """What observe knows of the managed resources this cycle (read now or remembered as
    written), and whether they are ours (the policy's status records it across restarts)."""

    prefix: str
    owner: str  # <namespace>/<name>: the owner tag's value
    observed: Observed
    owns_target: bool = False
    managed: bool = False  # resources of ours may exist
    activity: str | None = None  # the last scaling activity AWS reported
    resource_id: str = ""  # service/<cluster>/<service>


def events(done: Sequence[Action]) -> list[tuple[str, str, str]]:
    """(type, reason, message): one Event per kind of change made."""
    found = []
    for why, kind, reason in (("create", "Normal", CREATED), ("drift", "Warning", DRIFT_CORRECTED),
                              ("remove", "Normal", REMOVED)):
        acts = [a for a in done if a.why == why]
        if acts:
            found.append((kind, reason, summarize(acts)[:1000]))
    return found


def declared(desired: Desired) -> str:
    t = desired.target
    return (f"Scalable target {t.resource_id} [{t.min_capacity}, {t.max_capacity}] and "
            f"{', '.join(p.name for p in desired.policies)}")


def figures(reading: Reading, desired: Desired) -> dict[str, Any]:
    """The status's ``scaling.autoscaling``: the target, our policies, their alarms' states."""
    seen = reading.observed
    t = seen.target
    ours = [p for p in seen.policies or () if is_ours(p.name, reading.prefix)]
    alarm_names = {a.name for a in desired.alarms} | {n for p in ours for n in p.alarms}
    found: dict[str, Any] = {
        "scalableTarget": f"{t.resource_id} min {t.min_capacity} max {t.max_capacity}" if t else None,
        "policy": ", ".join(f"{p.name} ({p.type})" for p in ours) or None,
        "alarms": [{"name": a.name[:255], "state": a.state or "UNKNOWN"} for a in seen.alarms or ()
                   if a.name in alarm_names][:10],
        "ownedTarget": reading.owns_target,
    }
    if reading.activity:
        found["lastActivity"] = reading.activity
    return {k: v for k, v in found.items() if v is not None}
