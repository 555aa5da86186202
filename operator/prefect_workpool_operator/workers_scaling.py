"""The ECS side of a cycle: the AWS client of a policy, worker scaling, AwsConnected.

Scaling runs before recovery so that a spent AWS call budget only turns recovery's
infrastructure checks into "unknown" (hands off), never blocks a scaling decision.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import aws_autoscaling, scaling_backlog
from .aws_api import AwsClient, AwsCredentials, AwsError
from .core import scaling
from .core.conditions import Condition, format_time
from .core.durations import parse_duration
from .core.health import PoolObservation
from .core.secret_values import Use
from .kube_api import SecretReader, read_secret_for
from .models import EcsTarget, PolicySpec, ScalingSpec
from .prefect_api import PrefectClient, PrefectError

log = logging.getLogger(__name__)

AWS_CONNECTED = "AwsConnected"
AUTOSCALING_RECHECK = timedelta(minutes=10)  # an App Auto Scaling target rarely appears; don't ask every cycle



@dataclass
class EcsRuntime:
    """What a policy keeps between cycles for ECS."""

    client: AwsClient | None = None
    client_key: str | None = None
    memory: scaling.ScalingMemory = field(default_factory=scaling.ScalingMemory)
    backlog: scaling_backlog.BacklogMemory = field(default_factory=lambda: scaling_backlog.BacklogMemory())
    autoscaling: aws_autoscaling.AutoscalingMemory = field(default_factory=lambda: aws_autoscaling.AutoscalingMemory())
    autoscaling_target: bool = False
    autoscaling_checked_at: datetime | None = None

    reported_calls: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def take_call_counts(self) -> dict[str, int]:
        """AWS requests since the last call (the client's counter only grows)."""
        if self.client is None:
            return {}
        now = dict(self.client.calls)
        delta = {op: n - self.reported_calls.get(op, 0) for op, n in now.items()}
        self.reported_calls = now
        return delta


@dataclass
class ScalingOutcome:
    condition: Condition
    figures: dict[str, Any]
    event: tuple[str, str, str] | None = None  # (type, reason, message) when desiredCount changed
    more_events: list[tuple[str, str, str]] = field(default_factory=list)  # managed AWS resources changed


async def aws_client_for(ecs: EcsTarget, namespace: str, secrets: SecretReader, runtime: EcsRuntime) -> AwsClient:
    """The policy's AWS client, rebuilt when region, endpoint, credentials or budget change."""
    credentials = None
    ref = ecs.credentials_secret_ref
    if ref is not None:
        credentials = AwsCredentials(
            await read_secret_for(secrets, namespace, ref.name, ref.access_key_id_key, Use.AWS_ACCESS_KEY_ID),
            await read_secret_for(secrets, namespace, ref.name, ref.secret_access_key_key, Use.AWS_SECRET_ACCESS_KEY),
            await read_secret_for(secrets, namespace, ref.name, ref.session_token_key, Use.AWS_SESSION_TOKEN)
            if ref.session_token_key else None,
        )
    material = f"{ecs.region}\n{ecs.endpoint_url}\n{ecs.max_calls_per_cycle}\n" + "\n".join(
        credentials.secrets() if credentials else []
    )
    key = hashlib.sha256(material.encode()).hexdigest()
    if runtime.client is None or runtime.client_key != key:
        runtime.close()
        runtime.client = AwsClient(
            ecs.region, endpoint_url=ecs.endpoint_url, credentials=credentials, calls_per_cycle=ecs.max_calls_per_cycle
        )
        runtime.client_key = key
        runtime.reported_calls = {}
    runtime.client.start_cycle()
    return runtime.client


def rules_from(spec: ScalingSpec) -> scaling.ScalingRules:
    return scaling.ScalingRules(
        min_workers=spec.min_workers,
        max_workers=spec.max_workers,
        backlog_per_worker=spec.backlog_per_worker,
        include_pending=spec.include_pending,
        max_step_up=spec.max_step_up,
        max_step_down=spec.max_step_down,
        scale_down_stabilization=parse_duration(spec.scale_down_stabilization),
        scale_up_cooldown=parse_duration(spec.scale_up_cooldown),
        scale_down_cooldown=parse_duration(spec.scale_down_cooldown),
    )


def holding(reason_text: str) -> Condition:
    """Prefect data is missing this cycle: desiredCount stays where it is."""
    return Condition(scaling.SCALING, "Unknown", scaling.HOLDING, f"{reason_text}; desiredCount left unchanged.")


async def scale_workers(
    aws: AwsClient,
    spec: ScalingSpec,
    ecs: EcsTarget,
    observation: PoolObservation,
    runtime: EcsRuntime,
    *,
    pool: str,
    dry_run: bool,
    now: datetime,
    prefect: PrefectClient | None = None,
    queues: tuple[str, ...] = (),
) -> ScalingOutcome:
    try:
        view = await scaling_backlog.observe(prefect, spec, observation, runtime.backlog, pool=pool, queues=queues,
                                             now=now)
    except PrefectError as exc:  # fail static: no figure rather than a zero
        return ScalingOutcome(holding(f"No fresh backlog from Prefect ({exc.reason})"), {})
    backlog, figures = view.backlog, view.figures
    released: list[tuple[str, str, str]] = []
    if spec.mode not in aws_autoscaling.MANAGED_MODES:  # a mode switch removes what the managed modes created
        released = await aws_autoscaling.release(aws, ecs, runtime.autoscaling, dry_run=dry_run)
        if released:
            runtime.autoscaling_checked_at = None  # look again: the target just went
    if spec.publishes:
        published = await scaling_backlog.publish(aws, spec, pool, view, dry_run=dry_run, now=now,
                                                  memory=runtime.backlog)
        if spec.mode == "CloudWatchMetric":
            return ScalingOutcome(published.condition, {**figures, **published.figures}, more_events=released)
        managed = await aws_autoscaling.manage(aws, spec, ecs, runtime.autoscaling, published, figures, pool=pool,
                                               dry_run=dry_run, now=now)
        return ScalingOutcome(managed.condition, managed.figures, more_events=managed.events)

    rules = rules_from(spec)
    service = None
    in_progress = False
    if ecs.service:
        state = await aws.describe_service(ecs.cluster, ecs.service)
        service = scaling.ServiceCounts(state.desired, state.running, state.pending)
        in_progress = state.deployment_in_progress
        if spec.mode == "DesiredCount":
            await _refresh_autoscaling_target(aws, ecs, runtime, now)
    observed = scaling.ScalingObservation(backlog, service, in_progress, runtime.autoscaling_target)
    decision = scaling.plan_scaling(observed, rules, runtime.memory, on_conflict=spec.on_conflict, now=now)
    figures["recommendation"] = decision.recommendation
    if service is not None:
        figures.update(desired=service.desired, running=service.running, pending=service.pending)

    if decision.target is None or decision.target == decision.current or spec.mode == "Disabled" or dry_run:
        runtime.memory = decision.memory if decision.target is None else decision.memory_unapplied
        condition = scaling.scaling_condition(decision)
        if decision.target is not None and decision.target != decision.current:
            verb = "dryRun" if dry_run else "scaling.mode Disabled"
            condition = Condition(scaling.SCALING, "True", "DryRun" if dry_run else "ReportOnly",
                                  f"{verb}: would set desiredCount {decision.current} -> {decision.target}: "
                                  f"{decision.message}")
        return ScalingOutcome(condition, figures, more_events=released)

    assert ecs.service is not None  # DesiredCount mode is only valid with a service (CEL + model check)
    updated = await aws.set_desired_count(ecs.cluster, ecs.service, decision.target)
    runtime.memory = decision.memory
    figures.update(desired=updated.desired, running=updated.running, pending=updated.pending)
    figures["lastChange"] = {"time": format_time(now), "from": decision.current, "to": decision.target,
                             "reason": decision.reason}
    message = f"{ecs.service}: {decision.message}"
    return ScalingOutcome(scaling.scaling_condition(decision), figures, ("Normal", decision.reason, message),
                          more_events=released)


async def _refresh_autoscaling_target(aws: AwsClient, ecs: EcsTarget, runtime: EcsRuntime, now: datetime) -> None:
    due = runtime.autoscaling_checked_at is None or now - runtime.autoscaling_checked_at >= AUTOSCALING_RECHECK
    if due and ecs.service:
        runtime.autoscaling_target = await aws.scalable_target(ecs.cluster, ecs.service)
        runtime.autoscaling_checked_at = now


def aws_condition(aws: AwsClient | None, error: AwsError | None) -> Condition:
    failure = error or (aws.last_error if aws else None)
    if failure is not None:
        return Condition(AWS_CONNECTED, "False", failure.reason, failure.message)
    region = aws.region if aws else "?"
    return Condition(AWS_CONNECTED, "True", "Connected", f"AWS answered in {region}.")


async def release_on_delete(body: dict[str, Any], runtime: EcsRuntime, secrets: SecretReader | None) -> list[tuple[str, str, str]]:
    """The policy is being deleted: remove the Application Auto Scaling resources it created (and only those)."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    runtime.autoscaling.restore(f"{namespace}/{meta.get('name')}", body.get("status"))
    if not runtime.autoscaling.managed:
        return []
    spec = PolicySpec.model_validate(body.get("spec") or {})  # ValidationError: the caller gives up
    if spec.ecs is None or secrets is None and spec.ecs.credentials_secret_ref is not None:
        return []
    aws = await aws_client_for(spec.ecs, namespace, secrets, runtime)  # type: ignore[arg-type]
    return await aws_autoscaling.release(aws, spec.ecs, runtime.autoscaling, dry_run=spec.dry_run)
