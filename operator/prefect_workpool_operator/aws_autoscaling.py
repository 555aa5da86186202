"""Application Auto Scaling target, policy and CloudWatch alarms for TargetTracking / StepScaling.

The decisions are in ``core.aws_scaling``; this module reads AWS, applies the plan and
reports. Calls go through the policy's ``AwsClient`` (its budget, retries, error
mapping and call counts).

Calls go through ``AwsClient._call`` (the transport of aws_api) until that module
exposes it by service.

Call budget. The first cycle (and the one after a spec change) reads everything: the
scalable target, the policies on it, our alarms. After that a cycle makes one read,
in turn (target, policies, alarms, last scaling activity), and compares; with
nothing to correct it writes nothing. So steady state is PutMetricData plus one read,
and drift is found within four cycles. What we write we remember as written (no
read-back round).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from .aws_api import AwsClient, AwsError, _name
from .core import aws_scaling as core
from .core import scaling
from .core.conditions import Condition
from .core.durations import parse_duration
from .models import EcsTarget, ScalingSpec

log = logging.getLogger(__name__)

ROTATION = ("target", "policies", "alarms", "activity")
MANAGED_MODES = ("TargetTracking", "StepScaling")


@dataclass
class AutoscalingMemory:
    """Kept between cycles: what AWS last showed (or we last wrote), and ownership."""

    owner: str = ""  # <namespace>/<name> of the PrefectWorkPoolPolicy
    restored: bool = False
    managed: bool = False  # resources of ours may exist (from the last status, or created since)
    owns_target: bool = False
    key: str | None = None  # digest of the inputs the cache was read for
    target: core.Target | None = None
    policies: tuple[core.Policy, ...] | None = None
    alarms: tuple[core.Alarm, ...] | None = None
    activity: str | None = None
    activity_unsupported: bool = False  # the endpoint failed DescribeScalingActivities: stop asking
    turn: int = 0
    reads: dict[str, int] = field(default_factory=dict)

    def restore(self, owner: str, status: dict[str, Any] | None) -> None:
        """Ownership survives restarts through the policy's status."""
        self.owner = owner
        if self.restored:
            return
        self.restored = True
        figures = ((status or {}).get("scaling") or {}).get("autoscaling")
        if figures:
            self.managed = True
            self.owns_target = bool(figures.get("ownedTarget"))

    @property
    def prefix(self) -> str:
        namespace, _, name = self.owner.partition("/")
        return core.name_prefix(namespace or "default", name or "policy")

    def forget_reads(self) -> None:
        self.key, self.target, self.policies, self.alarms = None, None, None, None


@dataclass(frozen=True)
class Managed:
    condition: Condition
    figures: dict[str, Any]
    events: list[tuple[str, str, str]]


def inputs_from(spec: ScalingSpec, ecs: EcsTarget, pool: str) -> core.Inputs:
    assert ecs.service is not None  # the managed modes need a service (CEL + model check)
    return core.Inputs(
        mode=spec.mode, cluster=_name(ecs.cluster), service=_name(ecs.service), min_workers=spec.min_workers,
        max_workers=spec.max_workers, backlog_per_worker=spec.backlog_per_worker,
        scale_out_cooldown=int(parse_duration(spec.scale_up_cooldown).total_seconds()),
        scale_in_cooldown=int(parse_duration(spec.scale_down_cooldown).total_seconds()),
        scale_down_stabilization=int(parse_duration(spec.scale_down_stabilization).total_seconds()),
        max_step_down=spec.max_step_down, steps=tuple((s.at_least, s.add) for s in spec.steps),
        metric_namespace=spec.metric_namespace, metric_name=spec.metric_name, pool=pool,
        queues=tuple(spec.work_queues))


# -- reads ---------------------------------------------------------------------------


def _ids(rid: str) -> dict[str, str]:
    return {"ServiceNamespace": core.NAMESPACE, "ResourceId": rid, "ScalableDimension": core.DIMENSION}


async def read_target(aws: AwsClient, rid: str) -> core.Target | None:
    answer = await aws._call("application-autoscaling", "describe_scalable_targets", {
        "ServiceNamespace": core.NAMESPACE, "ResourceIds": [rid], "ScalableDimension": core.DIMENSION})
    for t in answer.get("ScalableTargets") or []:
        return core.Target(rid, int(t.get("MinCapacity") or 0), int(t.get("MaxCapacity") or 0))
    return None


async def read_policies(aws: AwsClient, rid: str) -> tuple[core.Policy, ...]:
    answer = await aws._call("application-autoscaling", "describe_scaling_policies", _ids(rid))
    policies = []
    for p in answer.get("ScalingPolicies") or []:
        kind = str(p.get("PolicyType") or "")
        config = p.get("TargetTrackingScalingPolicyConfiguration") if kind == core.TARGET_TRACKING else \
            p.get("StepScalingPolicyConfiguration")
        policies.append(core.Policy(str(p.get("PolicyName")), kind, config or {}, str(p.get("PolicyARN") or ""),
                                    tuple(str(a.get("AlarmName")) for a in p.get("Alarms") or [])))
    return tuple(policies)


async def read_alarms(aws: AwsClient, prefix: str, policies: tuple[core.Policy, ...] | None, *,
                      both: bool = False) -> tuple[core.Alarm, ...]:
    """The alarms our policies name (target tracking's own, or the step alarms) in one call; ours by
    name prefix when they name none, or also (``both``: a full read, so a leftover alarm is found)."""
    named = sorted({a for p in policies or () if core.is_ours(p.name, prefix) for a in p.alarms})
    queries: list[dict[str, Any]] = [{"AlarmNames": named[:100]}] if named else []
    if both or not named:
        queries.append({"AlarmNamePrefix": prefix + "-"})
    found: dict[str, core.Alarm] = {}
    for params in queries:
        answer = await aws._call("cloudwatch", "describe_alarms", params)
        for a in answer.get("MetricAlarms") or []:
            found[str(a.get("AlarmName"))] = core.Alarm(str(a.get("AlarmName")), a, "",
                                                         tuple(a.get("AlarmActions") or []), str(a.get("StateValue") or ""))
    return tuple(found.values())


async def read_activity(aws: AwsClient, rid: str) -> str | None:
    answer = await aws._call("application-autoscaling", "describe_scaling_activities", {**_ids(rid), "MaxResults": 1})
    for a in answer.get("ScalingActivities") or []:
        when = a.get("StartTime")
        stamp = when.isoformat() if isinstance(when, datetime) else str(when or "")
        return f"{stamp} {a.get('StatusCode', '')}: {a.get('Description', '')}"[:1000]
    return None


async def _observe(aws: AwsClient, memory: AutoscalingMemory, rid: str, key: str, *, everything: bool) -> None:
    """Everything on a new key; otherwise the next kind in turn."""
    if everything or memory.key != key:
        memory.target = await read_target(aws, rid)
        memory.policies = await read_policies(aws, rid)
        memory.alarms = await read_alarms(aws, memory.prefix, memory.policies, both=True)
        memory.key = key
        return
    rotation = ROTATION[:-1] if memory.activity_unsupported else ROTATION
    kind = rotation[memory.turn % len(rotation)]
    memory.turn += 1
    if kind == "target":
        memory.target = await read_target(aws, rid)
    elif kind == "policies":
        memory.policies = await read_policies(aws, rid)
    elif kind == "alarms":
        memory.alarms = await read_alarms(aws, memory.prefix, memory.policies)
    else:
        before = aws.last_error
        try:
            memory.activity = await read_activity(aws, rid)
        except AwsError as exc:  # not every endpoint has it (moto): a status detail, not a failure
            aws.last_error = before
            memory.activity_unsupported = True
            log.info("DescribeScalingActivities failed (%s): the last scaling activity will not be reported",
                     exc.reason)


# -- writes --------------------------------------------------------------------------


async def _apply(aws: AwsClient, memory: AutoscalingMemory, rid: str,
                 actions: tuple[core.Action, ...]) -> list[core.Action]:
    """Carry the plan out in order; the cache then holds what was written. Returns the actions made."""
    done: list[core.Action] = []
    arns = {p.name: p.arn for p in memory.policies or ()}
    policies = {p.name: p for p in memory.policies or ()}
    alarms = {a.name: a for a in memory.alarms or ()}
    for action in actions:
        if action.verb == "register_target" and action.target is not None:
            t = action.target
            params: dict[str, Any] = {**_ids(t.resource_id), "MinCapacity": t.min_capacity, "MaxCapacity": t.max_capacity}
            if action.why == "create":
                params["Tags"] = {core.OWNER_TAG: memory.owner}
                memory.owns_target = True
            await aws._call("application-autoscaling", "register_scalable_target", params)
            memory.target = t
        elif action.verb == "put_policy" and action.policy is not None:
            p = action.policy
            field_name = "TargetTrackingScalingPolicyConfiguration" if p.type == core.TARGET_TRACKING else \
                "StepScalingPolicyConfiguration"
            answer = await aws._call("application-autoscaling", "put_scaling_policy", {
                **_ids(rid), "PolicyName": p.name, "PolicyType": p.type, field_name: dict(p.config)})
            arns[p.name] = str(answer.get("PolicyARN") or "")
            policies[p.name] = replace(p, arn=arns[p.name],
                                       alarms=tuple(str(a.get("AlarmName")) for a in answer.get("Alarms") or []))
        elif action.verb == "put_alarm" and action.alarm is not None:
            a = action.alarm
            arn = arns.get(a.policy, "")
            if action.why == "follow" and arn in alarms.get(a.name, a).actions:
                continue  # the policy kept its ARN: the alarm already points at it
            params = {"AlarmName": a.name, "AlarmActions": [arn], **dict(a.params)}
            if action.why == "create":
                params["Tags"] = [{"Key": core.OWNER_TAG, "Value": memory.owner}]
            await aws._call("cloudwatch", "put_metric_alarm", params)
            alarms[a.name] = replace(a, actions=(arn,), state=alarms.get(a.name, a).state or "INSUFFICIENT_DATA")
        elif action.verb == "delete_alarm":
            await aws._call("cloudwatch", "delete_alarms", {"AlarmNames": [action.name]})
            alarms.pop(action.name, None)
        elif action.verb == "delete_policy":
            await aws._call("application-autoscaling", "delete_scaling_policy",
                            {**_ids(rid), "PolicyName": action.name})
            # Target tracking alarms go with their policy.
            for name in policies.pop(action.name, core.Policy("", "", {})).alarms:
                alarms.pop(name, None)
        elif action.verb == "deregister_target":
            await aws._call("application-autoscaling", "deregister_scalable_target", _ids(action.name))
            memory.target, memory.owns_target = None, False
        done.append(action)
    memory.policies = tuple(policies.values())
    memory.alarms = tuple(alarms.values())
    return done


# -- the two entry points --------------------------------------------------------------


async def manage(aws: AwsClient, spec: ScalingSpec, ecs: EcsTarget, memory: AutoscalingMemory, published: Any,
                 figures: dict[str, Any], *, pool: str, dry_run: bool, now: datetime) -> Managed:
    """TargetTracking / StepScaling: bring the target, policy and alarms to the spec (or report the conflict)."""
    inputs = inputs_from(spec, ecs, pool)
    desired = core.desired_resources(inputs, memory.prefix)
    rid = desired.target.resource_id
    key = hashlib.sha256(repr((inputs, spec.on_conflict)).encode()).hexdigest()
    await _observe(aws, memory, rid, key, everything=False)
    observed = core.Observed(memory.target, memory.policies, memory.alarms)
    plan = core.plan(desired, observed, prefix=memory.prefix, owns_target=memory.owns_target,
                     on_conflict=spec.on_conflict)
    figures = {**figures, **published.figures}
    if plan.conflict and spec.on_conflict != "Override":
        figures["autoscaling"] = _figures(memory, desired)
        return Managed(Condition(scaling.SCALING, "False", core.CONFLICT,
                                 f"{plan.conflict[0].upper()}{plan.conflict[1:]}; onConflict is Hold, so the operator "
                                 f"leaves Application Auto Scaling alone. {published.condition.message}"),
                       figures, [])
    note = f" {desired.note}" if desired.note else ""
    override = f" Overriding: {plan.conflict}." if plan.conflict else ""
    if dry_run:
        would = core.summarize(plan.actions) or "nothing to change"
        return Managed(Condition(scaling.SCALING, "True", "DryRun", f"dryRun: {would}. {published.condition.message}"
                                                                     f"{note}{override}"), figures, [])
    done = await _apply(aws, memory, rid, plan.actions)
    memory.managed = True
    figures["autoscaling"] = _figures(memory, desired)
    if not done:
        return Managed(Condition(scaling.SCALING, "True", core.AUTOSCALING_READY,
                                 f"{published.condition.message} {_what(desired)} as declared.{note}{override}"),
                       figures, [])
    return Managed(Condition(scaling.SCALING, "True", core.AUTOSCALING_CHANGED,
                             f"{published.condition.message} {core.summarize(done)}.{note}{override}"),
                   figures, _events(done))


async def release(aws: AwsClient, ecs: EcsTarget, memory: AutoscalingMemory, *, dry_run: bool) -> list[tuple[str, str, str]]:
    """Remove what the operator created (mode switched away, scaling removed, policy deleted); only that."""
    if not memory.managed or not ecs.service:
        return []
    rid = core.resource_id(_name(ecs.cluster), _name(ecs.service))
    await _observe(aws, memory, rid, "release", everything=True)
    plan = core.plan(None, core.Observed(memory.target, memory.policies, memory.alarms), prefix=memory.prefix,
                     owns_target=memory.owns_target)
    if dry_run:
        return []
    done = await _apply(aws, memory, rid, plan.actions)
    memory.managed = False
    memory.forget_reads()
    return _events(done)


def _events(done: list[core.Action]) -> list[tuple[str, str, str]]:
    events = []
    for why, kind, reason in (("create", "Normal", core.CREATED), ("drift", "Warning", core.DRIFT_CORRECTED),
                              ("remove", "Normal", core.REMOVED)):
        acts = [a for a in done if a.why == why]
        if acts:
            events.append((kind, reason, core.summarize(acts)[:1000]))
    return events


def _what(desired: core.Desired) -> str:
    t = desired.target
    return (f"Scalable target {t.resource_id} [{t.min_capacity}, {t.max_capacity}] and "
            f"{', '.join(p.name for p in desired.policies)}")


def _figures(memory: AutoscalingMemory, desired: core.Desired) -> dict[str, Any]:
    t = memory.target
    ours = [p for p in memory.policies or () if core.is_ours(p.name, memory.prefix)]
    alarm_names = {a.name for a in desired.alarms} | {n for p in ours for n in p.alarms}
    figures: dict[str, Any] = {
        "scalableTarget": f"{t.resource_id} min {t.min_capacity} max {t.max_capacity}" if t else None,
        "policy": ", ".join(f"{p.name} ({p.type})" for p in ours) or None,
        "alarms": [{"name": a.name[:255], "state": a.state or "UNKNOWN"} for a in memory.alarms or ()
                   if a.name in alarm_names][:10],
        "ownedTarget": memory.owns_target,
    }
    if memory.activity:
        figures["lastActivity"] = memory.activity
    return {k: v for k, v in figures.items() if v is not None}
