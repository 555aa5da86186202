"""A deleted policy's cleanup: remove the Application Auto Scaling target, policies and
alarms the managed modes created (only those), as a small observe → decide → act."""

from __future__ import annotations

from typing import Any

from prefect_workpool_operator.cycle.act import apply_managed
from prefect_workpool_operator.cycle.clients import AwsConnection, aws_client_for
from prefect_workpool_operator.core import aws_scaling
from prefect_workpool_operator.core.autoscaling_plan import plan_release
from prefect_workpool_operator.kube.api import SecretReader
from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.cycle.memory import AutoscalingCache
from prefect_workpool_operator.cycle.observe_autoscaling import read_managed


async def release_on_delete(body: dict[str, Any], cache: AutoscalingCache, connection: AwsConnection,
                            secrets: SecretReader | None) -> list[tuple[str, str, str]]:
    """(type, reason, message) Events of what was removed. Raises ``AwsError``, ``SecretError``
    or ``ValidationError`` (the caller retries, then gives up with a warning)."""
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    cache.restore(f"{namespace}/{meta.get('name')}", body.get("status"))
    if not cache.managed:
        return []
    spec = PolicySpec.model_validate(body.get("spec") or {})
    if spec.ecs is None or not spec.ecs.service or (secrets is None and spec.ecs.credentials_secret_ref is not None):
        return []
    aws = await aws_client_for(spec.ecs, namespace, secrets, connection)  # type: ignore[arg-type]
    reading = await read_managed(aws, None, spec.ecs, cache, pool=spec.prefect.work_pool)
    step = plan_release(reading, dry_run=spec.dry_run)
    if step is None:
        return []
    done: list[aws_scaling.Action] = []
    await apply_managed(aws, step, cache, done)
    return aws_scaling.events(done)
