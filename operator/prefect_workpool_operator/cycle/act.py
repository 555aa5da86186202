"""act: a plan's writes, run together, each outcome recorded (none raises).

PutMetricData, then the managed Application Auto Scaling / alarm writes (or the removal
of ours), then UpdateService; the job template (written, then read back: a value is
never reported as set before the template holds it), and the guarded recovery batches
(``act_recovery``: ``prefect_http.WRITE_CONCURRENCY`` at once per Prefect server). In dry-run the plan holds no writes.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from prefect_workpool_operator.aws import AwsClient, AwsError
from prefect_workpool_operator.concurrent_reads import gather_or_cancel
from prefect_workpool_operator.core import aws_scaling, scaling
from prefect_workpool_operator.core.autoscaling_plan import ManagedStep
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.plan import Observation, Outcome, Plan
from prefect_workpool_operator.cycle.act_recovery import write_batches
from prefect_workpool_operator.cycle.memory import AutoscalingCache, RecoveryMemory
from prefect_workpool_operator.prefect.client import PrefectClient


async def act(
    plan: Plan, observation: Observation, *, prefect: PrefectClient, aws: AwsClient | None, pool: str,
    recovery: RecoveryMemory, now: datetime, autoscaling: AutoscalingCache | None = None,
) -> Outcome:
    outcome = Outcome()
    writes = []
    if (plan.scale is not None or plan.metric is not None or plan.managed is not None) and aws is not None:
        writes.append(_scale(plan, aws, outcome, autoscaling or AutoscalingCache()))
    if plan.template is not None:
        writes.append(_template(plan, prefect, pool, outcome))
    if plan.batches and observation.stale is not None:
        writes.append(_recover(plan, prefect, observation, recovery, outcome, now))
    if writes:
        await gather_or_cancel(*writes)  # each records its own failure; only a bug raises here
    if aws is not None and aws.last_error is not None:
        outcome.aws_failure = aws.last_error.as_failure()
    return outcome


async def _scale(plan: Plan, aws: AwsClient, outcome: Outcome, cache: AutoscalingCache) -> None:
    aws.budget.reserved = 0  # kept back for this write during the reads
    done: list[aws_scaling.Action] = []
    try:
        if plan.metric is not None:
            metric = plan.metric
            await aws.put_backlog_series(metric.namespace, metric.name, metric.series)
        if plan.managed is not None:
            await apply_managed(aws, plan.managed, cache, done)
        if plan.scale is not None:
            change = plan.scale
            state = await aws.set_desired_count(change.cluster, change.service, change.target)
            outcome.scaled = scaling.ServiceCounts(state.desired, state.running, state.pending)
    except AwsError as exc:
        outcome.scaling_failure = exc.as_failure()
    finally:
        if plan.managed is not None:
            outcome.managed_done, outcome.managed_after = tuple(done), cache.reading()


async def apply_managed(aws: AwsClient, step: ManagedStep, cache: AutoscalingCache,
                        done: list[aws_scaling.Action]) -> None:
    """Carry the managed writes out in order; the cache then holds what was written (and ``done``
    the writes made). A removal that went through forgets the resources."""
    rid = step.reading.resource_id
    arns = {p.name: p.arn for p in cache.policies or ()}
    policies = {p.name: p for p in cache.policies or ()}
    alarms = {a.name: a for a in cache.alarms or ()}
    try:
        for action in step.actions:
            if action.verb == "register_target" and action.target is not None:
                await aws.register_target(action.target, owner=cache.owner if action.why == "create" else None)
                cache.target = action.target
                cache.owns_target = cache.owns_target or action.why == "create"
            elif action.verb == "put_policy" and action.policy is not None:
                arn, attached = await aws.put_policy(rid, action.policy)
                arns[action.name] = arn
                policies[action.name] = replace(action.policy, arn=arn, alarms=attached)
            elif action.verb == "put_alarm" and action.alarm is not None:
                a = action.alarm
                arn = arns.get(a.policy, "")
                if action.why == "follow" and arn in alarms.get(a.name, a).actions:
                    continue  # the policy kept its ARN: the alarm already points at it
                await aws.put_alarm(a, arn, owner=cache.owner if action.why == "create" else None)
                alarms[a.name] = replace(a, actions=(arn,), state=alarms.get(a.name, a).state or "INSUFFICIENT_DATA")
            elif action.verb == "delete_alarm":
                await aws.delete_alarm(action.name)
                alarms.pop(action.name, None)
            elif action.verb == "delete_policy":
                await aws.delete_policy(rid, action.name)
                for name in policies.pop(action.name, aws_scaling.Policy("", "", {})).alarms:
                    alarms.pop(name, None)  # target tracking's alarms go with their policy
            elif action.verb == "deregister_target":
                await aws.deregister_target(action.name)
                cache.target, cache.owns_target, cache.target_removed = None, False, True
            done.append(action)
    finally:
        cache.policies, cache.alarms = tuple(policies.values()), tuple(alarms.values())
    if step.desired is not None:
        cache.managed = True
    else:
        cache.managed = False
        cache.forget_reads()


async def _template(plan: Plan, prefect: PrefectClient, pool: str, outcome: Outcome) -> None:
    assert plan.template is not None and plan.template.template is not None
    try:
        await prefect.update_base_job_template(pool, plan.template.template)
        outcome.template_reread = (await prefect.read_work_pool(pool)).get("base_job_template")
    except OperatorError as exc:
        outcome.template_failure = exc.as_failure()


async def _recover(
    plan: Plan, prefect: PrefectClient, observation: Observation, memory: RecoveryMemory, outcome: Outcome,
    now: datetime,
) -> None:
    assert observation.stale is not None
    try:
        outcome.recovery = await write_batches(prefect, plan.batches, observation.stale, memory, now)
    except OperatorError as exc:
        outcome.recovery_failure = exc.as_failure()
