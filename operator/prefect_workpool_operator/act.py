"""act: a plan's writes, run together, each outcome recorded (none raises).

UpdateService or PutMetricData, the job template (written, then read back: a value is
never reported as set before the template holds it), and the guarded recovery batches
(``recovery.WRITE_CONCURRENCY`` at once). In dry-run the plan holds no writes.
"""

from __future__ import annotations

from datetime import datetime

from .aws import AwsClient, AwsError
from .concurrent_reads import gather_or_cancel
from .core import scaling
from .core.errors import OperatorError
from .core.plan import Observation, Outcome, Plan
from .prefect_api import PrefectClient
from .recovery import RecoveryMemory, write_batches


async def act(
    plan: Plan, observation: Observation, *, prefect: PrefectClient, aws: AwsClient | None, pool: str,
    recovery: RecoveryMemory, now: datetime,
) -> Outcome:
    outcome = Outcome()
    writes = []
    if (plan.scale is not None or plan.metric is not None) and aws is not None:
        writes.append(_scale(plan, aws, outcome))
    if plan.template is not None:
        writes.append(_template(plan, prefect, pool, outcome))
    if plan.batches and observation.stale is not None:
        writes.append(_recover(plan, prefect, observation, recovery, outcome, now))
    if writes:
        await gather_or_cancel(*writes)  # each records its own failure; only a bug raises here
    if aws is not None and aws.last_error is not None:
        outcome.aws_failure = aws.last_error.as_failure()
    return outcome


async def _scale(plan: Plan, aws: AwsClient, outcome: Outcome) -> None:
    aws.budget.reserved = 0  # kept back for this write during the reads
    try:
        if plan.scale is not None:
            change = plan.scale
            state = await aws.set_desired_count(change.cluster, change.service, change.target)
            outcome.scaled = scaling.ServiceCounts(state.desired, state.running, state.pending)
        elif plan.metric is not None:
            metric = plan.metric
            await aws.put_backlog_metric(metric.namespace, metric.name, dict(metric.dimensions), metric.value)
    except AwsError as exc:
        outcome.scaling_failure = exc.as_failure()


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
