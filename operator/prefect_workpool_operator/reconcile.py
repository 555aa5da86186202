"""One reconcile cycle of one policy, without kopf: body in, status patch and Events out.

The kopf glue (``handlers.py``) only decides *when* to call ``run_cycle`` and applies
what it returns. Keeping this free of kopf makes the cycle testable against real
servers with nothing but the clients it needs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping, Protocol

import httpx
from pydantic import ValidationError

from .core import health
from .core.conditions import Condition, changed_conditions, format_time, merge_conditions
from .core.health import Failure, PoolObservation
from .kube_api import SecretError
from .models import PolicySpec
from .core import stale
from .prefect_api import PrefectClient, PrefectError
from .recovery import InfrastructureCheck, RequeueMemory, recover_stale_runs

log = logging.getLogger(__name__)


class SecretReader(Protocol):
    async def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class CycleOutcome:
    status: dict[str, Any]
    events: list[Event]
    spec: PolicySpec | None = None


@dataclass
class PolicyRuntime:
    """What a policy keeps between cycles, in memory (kopf's per-object memo)."""

    client: PrefectClient | None = None
    client_key: str | None = None
    queues_checked_generation: int | None = None
    last_cycle_at: datetime | None = None
    last_generation: int | None = None
    next_due: datetime | None = None
    requeues: RequeueMemory = field(default_factory=RequeueMemory)
    infrastructure_check: InfrastructureCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def is_due(self, generation: int | None, now: datetime) -> bool:
        """Run at once on a new spec, otherwise when the interval has passed."""
        if generation != self.last_generation or self.next_due is None:
            return True
        return now >= self.next_due


async def run_cycle(
    body: Mapping[str, Any],
    *,
    http: httpx.AsyncClient,
    secrets: SecretReader,
    runtime: PolicyRuntime,
    now: datetime,
) -> CycleOutcome:
    meta = body.get("metadata", {})
    generation = meta.get("generation")
    previous = (body.get("status") or {}).get("conditions")
    figures: dict[str, Any] = {}

    spec: PolicySpec | None = None
    acted: list[Event] = []
    try:
        spec = PolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        conditions = health.health_conditions(None, Failure(health.INVALID_SPEC, _describe(exc)), pool="", api_url="")
    else:
        conditions, figures, acted = await _observe(
            spec, meta, body.get("status") or {}, http, secrets, runtime, now
        )

    # Conditions of features the spec no longer enables go away.
    retired = {stale.STALE_RUNS_RECOVERED} if spec is not None and spec.stale_runs is None else set()
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(previous, conditions, now, generation, drop=retired),
        "lastReconcileTime": format_time(now),
        **figures,
    }
    if retired:
        status["staleRuns"] = None
    events = [
        Event("Normal" if c.status == "True" else "Warning", c.reason, c.message)
        for c in changed_conditions(previous, conditions)
        if not (acted and c.type == stale.STALE_RUNS_RECOVERED)  # the acted Event already tells it
    ]
    return CycleOutcome(status=status, events=events + acted, spec=spec)


async def _observe(
    spec: PolicySpec,
    meta: Mapping[str, Any],
    previous_status: Mapping[str, Any],
    http: httpx.AsyncClient,
    secrets: SecretReader,
    runtime: PolicyRuntime,
    now: datetime,
) -> tuple[list[Condition], dict[str, Any], list[Event]]:
    conn = spec.prefect
    namespace, generation = meta.get("namespace", ""), meta.get("generation")
    if spec.suspend:
        return health.suspended_conditions(), {}, []
    try:
        auth_header = await _auth_header(spec, namespace, secrets)
        client = _client_for(spec, auth_header, http, runtime)
        if runtime.queues_checked_generation != generation:
            await client.check_queues(conn.work_pool, list(conn.work_queues))
            runtime.queues_checked_generation = generation
        observation = await client.observe_pool(conn.work_pool, list(conn.work_queues), now)
    except (SecretError, PrefectError) as exc:
        failure = Failure(exc.reason, exc.message)
        log.warning("policy %s/%s: %s: %s", namespace, meta.get("name"), failure.reason, failure.message)
        # Fail static: keep the last figures rather than report zeros we did not see.
        return health.health_conditions(None, failure, pool=conn.work_pool, api_url=conn.api_url), {}, []
    conditions = health.health_conditions(observation, None, pool=conn.work_pool, api_url=conn.api_url)
    figures = status_figures(observation)
    events: list[Event] = []
    if spec.stale_runs is not None:
        try:
            outcome = await recover_stale_runs(
                client,
                spec.stale_runs,
                pool=conn.work_pool,
                queues=list(conn.work_queues),
                policy=f"{namespace}/{meta.get('name')}",
                online_workers=observation.online_workers,
                dry_run=spec.dry_run,
                memory=runtime.requeues,
                now=now,
                total_before=int(((previous_status.get("staleRuns") or {}).get("totalRecovered")) or 0),
                infrastructure_check=runtime.infrastructure_check,
            )
        except PrefectError as exc:
            log.warning("policy %s/%s: recovery: %s: %s", namespace, meta.get("name"), exc.reason, exc.message)
            message = f"Stale-run recovery stopped: {exc.message}"
            conditions[0] = Condition(health.READY, "False", exc.reason, message)
            conditions.append(Condition(stale.STALE_RUNS_RECOVERED, "False", exc.reason, message))
        else:
            conditions.append(outcome.condition)
            figures["staleRuns"] = outcome.figures
            if outcome.last_recovery:
                figures["lastRecovery"] = outcome.last_recovery
            if outcome.event_message:
                events.append(Event("Normal", "RunsRecovered", outcome.event_message))
    return conditions, figures, events


def status_figures(o: PoolObservation) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "poolStatus": o.pool_status,
        "workers": {"online": o.workers_online, "offline": o.workers_offline},
        "runs": {"late": o.late, "pending": o.pending, "running": o.running},
    }
    if o.server_version:
        figures["prefectVersion"] = o.server_version
    return figures


async def _auth_header(spec: PolicySpec, namespace: str, secrets: SecretReader) -> str | None:
    auth = spec.prefect.auth
    if auth is None:
        return None
    if auth.api_key_secret_ref is not None:
        ref = auth.api_key_secret_ref
        return f"Bearer {await secrets.read_secret_key(namespace, ref.name, ref.key)}"
    if auth.basic_auth_secret_ref is not None:
        ref = auth.basic_auth_secret_ref
        value = await secrets.read_secret_key(namespace, ref.name, ref.key)
        if ":" not in value:
            raise SecretError(
                health.SECRET_KEY_NOT_FOUND,
                f"Secret {namespace}/{ref.name} key {ref.key!r} must hold 'user:password'",
            )
        return "Basic " + base64.b64encode(value.encode()).decode()
    return None


def _client_for(
    spec: PolicySpec, auth_header: str | None, http: httpx.AsyncClient, runtime: PolicyRuntime
) -> PrefectClient:
    """Reuse the policy's client until its URL, credentials or timeout change."""
    digest = hashlib.sha256(f"{spec.prefect.api_url}\n{auth_header}\n{spec.prefect.request_timeout}".encode()).hexdigest()
    if runtime.client is None or runtime.client_key != digest:
        runtime.client = PrefectClient(
            http, spec.prefect.api_url, auth_header=auth_header, timeout=spec.request_timeout_seconds
        )
        runtime.client_key = digest
    return runtime.client


def _describe(exc: ValidationError) -> str:
    """Field paths and problems only: pydantic's default text echoes input values."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "spec"
        problems.append(f"spec.{path}: {err['msg']}")
    return "Invalid spec: " + "; ".join(problems[:5])


def next_due(now: datetime, interval: timedelta, jitter: float) -> datetime:
    """Spread cycles of many policies: up to 10% of the interval later, fixed per policy."""
    return now + interval + interval * 0.1 * jitter
