"""kopf glue, per policy: with ``handlers/startup.py`` (the process's start-up, login and
shutdown) the only modules that import kopf.

It decides when a policy's cycle runs (one timer per policy), keeps clients in
memo, applies the cycle's status patch and posts its Events. Everything else is
in ``reconcile`` and below.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import kopf

from prefect_workpool_operator import GROUP, PLURAL, VERSION
from prefect_workpool_operator.config import in_shard
from prefect_workpool_operator.core import claims, health, report, schedule
from prefect_workpool_operator.core.conditions import Condition, format_time, merge_conditions, unobserved
from prefect_workpool_operator.core.durations import parse_duration
from prefect_workpool_operator.aws import AwsError
from prefect_workpool_operator.cycle.clients import AwsConnection
from prefect_workpool_operator.kube.api import SecretError
from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.cycle.observe import ReadCache
from prefect_workpool_operator.handlers.startup import CONFIG, ELECTOR, FINALIZER, kube_client, running_cycles
from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from prefect_workpool_operator.cycle.release import release_on_delete
from prefect_workpool_operator.kube.secrets import SecretCache
from prefect_workpool_operator.fleet.keyed_turns import KeyTurns, KeyedTurns, cycle_key

log = logging.getLogger(__name__)
# An invalid spec has no interval of its own; a spec edit retries at once anyway.
FALLBACK_INTERVAL = timedelta(seconds=30)
DELETE_RETRIES = 5  # AWS cleanup on deletion: then the policy goes anyway (a Warning says what was left)
_STARTED = time.time()
# Cycles in flight per Prefect server (and in total): a burst (a fleet's first cycles, a restart)
# waits its turn instead of queueing every read on the shared connections until they time out;
# within a server, warm cycles go ahead of cold first ones, which never hold every turn
# (fleet/turns.py); a slow server holds only its own turns (fleet/keyed_turns.py).
_turns = KeyedTurns(CONFIG.max_cycles_in_flight, CONFIG.max_cycles_in_flight_total)


def _acting() -> bool:
    return ELECTOR is None or ELECTOR.is_leader


def _in_my_shard(labels: kopf.Labels, **_: Any) -> bool:
    """kopf filter: a policy of another shard is not cycled (its timer stops on relabel)."""
    return in_shard(dict(labels), CONFIG.shard)


async def _unless_stopped(cycle: asyncio.Future[Any], runtime: PolicyRuntime, stopped: kopf.DaemonStopped) -> Any:
    """The cycle's outcome, or None once it was cancelled: deleting the policy (kopf stops
    its timer) or suspending it (``cancel_cycle``) must not wait for a hung server."""
    runtime.extra["cycle"] = cycle
    running_cycles.add(cycle)
    cycle.add_done_callback(running_cycles.discard)

    async def stopping() -> None:
        await stopped.wait()

    stop = asyncio.ensure_future(stopping())
    try:
        await asyncio.wait({cycle, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        runtime.extra.pop("cycle", None)
    if not cycle.done():
        cycle.cancel()
        await asyncio.wait({cycle}, timeout=1.0)
    if cycle.cancelled():
        return None
    return cycle.result()


@kopf.on.field(GROUP, VERSION, PLURAL, field="spec.suspend", new=True)
def cancel_cycle(memo: kopf.Memo, **_: Any) -> None:
    """Suspending stops a running cycle at once (deletion does so through the timer's stop flag)."""
    runtime = memo.get("runtime")
    cycle = runtime.extra.get("cycle") if runtime is not None else None
    if cycle is not None and not cycle.done():
        cycle.cancel()


def _where(exc: BaseException) -> str:
    """Where an exception was raised (file:line), to tell distinct errors apart without its text."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo, retry: int, logger: kopf.Logger, **_: Any) -> None:
    """A deleted policy's clients close, its metric series go away, and the Application Auto
    Scaling resources it created are removed (retried a few times, then left with a warning)."""
    runtime = memo.get("runtime")
    if runtime is not None:
        cycle = runtime.extra.get("cycle")
        if cycle is not None and not cycle.done():
            cycle.cancel()
    ecs = runtime.ecs if runtime is not None else AwsConnection()
    reads = runtime.reads if runtime is not None else ReadCache()
    try:
        for type_, reason, message in await release_on_delete(dict(body), reads.autoscaling, ecs, _secrets(memo)):
            kopf.event(body, type=type_, reason=reason, message=message)
    except (AwsError, SecretError, ValueError) as exc:
        if retry < DELETE_RETRIES:
            raise kopf.TemporaryError(f"removing the Application Auto Scaling resources: {exc}", delay=10) from None
        logger.warning("left the Application Auto Scaling resources in place after %d tries: %s", retry + 1, exc)
    finally:
        ecs.close()
    memo.metrics.forget(meta)


def _secrets(memo: kopf.Memo) -> SecretCache | None:
    kube_client(memo)
    return memo.shared.get("secrets")


@kopf.index(GROUP, VERSION, PLURAL)
def policy_claims(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, **_: Any) -> dict[str, claims.Claimant] | None:
    """Every watched policy (all namespaces) by what it claims: a pool, an ECS service."""
    if meta.get("deletionTimestamp"):
        return None  # a policy being deleted gives its claims up at once
    me = _claimant(meta)
    return {key: me for key in claims.claim_keys(dict(spec))} or None


def _claimant(meta: kopf.Meta) -> claims.Claimant:
    return claims.Claimant(str(meta.get("creationTimestamp") or ""), str(meta.get("namespace")), str(meta.get("name")))


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.tick_seconds, when=_in_my_shard)
async def reconcile(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
    policy_claims: kopf.Index[str, claims.Claimant], stopped: kopf.DaemonStopped, **_: Any,
) -> None:
    if not _acting():
        return  # standby: the shard's leader runs the cycles
    if not await _finalized(meta, stopped):
        return
    owner = dict(body.status.get("owner") or {})
    if owner.get("shard") != CONFIG.shard_name or owner.get("pod") != CONFIG.identity:
        patch.status["owner"] = {"shard": CONFIG.shard_name, "pod": CONFIG.identity, "since": format_time(datetime.now(timezone.utc))}
        if owner.get("shard") not in (None, CONFIG.shard_name):
            # Relabelled from another shard: claim now, act from the next tick, once our own
            # watch shows the claim — by then the old shard has seen the relabel too.
            logger.info("policy moved from shard %s: claimed by %s", owner.get("shard"), CONFIG.shard_name)
            return
    runtime: PolicyRuntime = memo.setdefault("runtime", PolicyRuntime())
    generation = meta.get("generation")
    interval = _interval_seconds(body.spec)
    offset = schedule.phase(str(meta.get("uid") or meta.get("name")), interval)
    if runtime.next_start is None and runtime.last_generation is None and time.time() - _STARTED < interval:
        # The operator just started: spread the fleet's first cycles over one interval rather
        # than starting them all at once. Policies created or edited later run at once.
        runtime.last_generation = generation
        runtime.next_start = schedule.next_start(time.time(), interval, offset)
    # A scheduled start, or None when the spec is new or changed (run at once).
    due = runtime.next_start if generation == runtime.last_generation else None
    if due is not None:
        if patch.status and schedule.wait_before_start(time.time(), due, CONFIG.tick_seconds) is None:
            return  # kopf writes the ownership claim on return; the cycle comes at a later call
        woke = await _sleep_to(due, meta, generation, stopped)
        if woke == "stop":
            return
        if woke == "edited":  # run the new spec at once (the body is kopf's live view)
            generation, due = meta.get("generation"), None
            interval = _interval_seconds(body.spec)
            offset = schedule.phase(str(meta.get("uid") or meta.get("name")), interval)
    cold = runtime.cycles_run == 0  # its first cycle in this process: nothing read yet
    turns = _turns.of(cycle_key(body.spec), cold=cold)
    if not await _turn(turns, stopped):
        return
    try:
        await _reconcile_now(body, meta, patch, memo, logger, policy_claims, stopped, runtime, generation, due,
                             interval, offset)
    finally:
        turns.release()


async def _finalized(meta: kopf.Meta, stopped: kopf.DaemonStopped) -> bool:
    """Write nothing to a new policy before kopf's finalizer is on it: kopf adds it, as it
    starts this timer, with a JSON patch pinned to the resourceVersion it saw, and a status
    write of ours landing first made the API server answer that patch 422 (kopf sent it again
    at the next event: ~15 % of 1,000 new policies). Waits a few seconds at most (the body is
    kopf's live view); False when the policy stopped meanwhile."""
    for wait in schedule.finalizer_waits():
        if FINALIZER in (meta.get("finalizers") or []) or meta.get("deletionTimestamp"):
            break
        await stopped.wait(wait)
        if stopped:
            return False
    return True


async def _turn(turns: KeyTurns, stopped: kopf.DaemonStopped) -> bool:
    """Wait for a free turn (the policy's Prefect server's, ``_turns``); False when the policy stopped meanwhile."""
    if not turns.locked():
        await turns.take()  # free: taken without waiting
        return True
    turn = asyncio.ensure_future(turns.take())
    stop = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({turn, stop}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        _give_back(turn, turns)
        raise
    finally:
        stop.cancel()
    if turn.done() and not turn.cancelled() and not stopped:
        return True
    _give_back(turn, turns)
    return False


def _give_back(turn: asyncio.Future[Any], turns: KeyTurns) -> None:
    if turn.done() and not turn.cancelled():
        turns.release()
    else:
        turn.cancel()


async def _reconcile_now(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
    policy_claims: kopf.Index[str, claims.Claimant], stopped: kopf.DaemonStopped, runtime: PolicyRuntime,
    generation: Any, due: float | None, interval: float, offset: float,
) -> None:
    kube_client(memo)
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    runtime.last_generation = generation
    # The next start is on the policy's phase grid, whenever this one ends: the gap is the interval.
    runtime.next_start = schedule.start_after_cycle(max(now.timestamp(), due or 0.0), interval, offset,
                                                    first=runtime.cycles_run == 0)
    runtime.cycles_run += 1
    try:
        mine = claims.claim_keys(dict(body.spec))
        rival = claims.rival_for(_claimant(meta), {key: list(policy_claims.get(key, [])) for key in mine})
        log.debug("cycle of %s/%s by %s in shard %s", meta.get("namespace"), meta.get("name"), CONFIG.identity, CONFIG.shard_name)
        memo.metrics.cycle_started(meta, at=now.timestamp(), late=now.timestamp() - due if due is not None else None)
        cycle = asyncio.ensure_future(run_cycle(
            body, http=memo.http, secrets=memo.shared.get("secrets"), runtime=runtime, now=now, rival=rival
        ))
        outcome = await _unless_stopped(cycle, runtime, stopped)
        if outcome is None:
            logger.info("cycle cancelled: the policy is being deleted or suspended, or leadership was lost")
            return
        if not _acting():
            return  # leadership lost as the cycle ended: the new leader writes the status
    except Exception as exc:  # never let one policy's surprise become a kopf retry storm
        if stopped:
            return  # shutting down: the shared clients are being closed under the cycle
        # The traceback once per distinct error (kopf's logger also posts it as an Event), then reminders.
        verdict = runtime.log_gate.decide(f"InternalError:{type(exc).__name__}:{_where(exc)}", now)
        if verdict == "full":
            logger.error("reconcile failed unexpectedly: %s", type(exc).__name__, exc_info=True)
        elif verdict == "reminder":
            log.error("policy %s/%s: still failing with %s (%d cycles)", meta.get("namespace"), meta.get("name"),
                      type(exc).__name__, runtime.log_gate.repeats)
        failed = [Condition(health.READY, "False", "InternalError", f"Unexpected {type(exc).__name__}; see operator logs.")]
        failed += unobserved(body.status.get("conditions"), failed, frozenset(), failed[0].message)
        patch.status["conditions"] = merge_conditions(body.status.get("conditions"), failed, now, generation)
        patch.status["lastReconcileTime"] = format_time(datetime.now(timezone.utc))
        memo.metrics.record_failure(meta, "InternalError")
        return
    if outcome.spec is not None and _not_ready(outcome.status):
        # Whatever failed (a refused or missing key, a bad value), the next cycle reads the Secrets afresh.
        _forget_secrets(memo.shared.get("secrets"), meta.get("namespace") or "", outcome.spec)
    for key, value in report.status_changes(body.status, outcome.status, now, CONFIG.status_heartbeat_seconds).items():
        patch.status[key] = value
    memo.metrics.record_cycle(meta, body.spec, outcome.status, time.monotonic() - started)
    if runtime.ecs.client is not None:
        memo.metrics.record_aws_calls(runtime.ecs.take_call_counts())
        memo.metrics.record_aws_budget(meta, runtime.ecs.client.budget.refused)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


async def _sleep_to(due: float, meta: kopf.Meta, generation: Any, stopped: kopf.DaemonStopped) -> str:
    """Sleep to the cycle's start inside this one call rather than return and be called
    again every tick (each kopf timer call costs the whole handler machinery: 1,000
    policies made ~200 calls a second, 5 of 6 doing nothing). Wakes every tick to notice
    a spec edit or lost leadership; deletion and shutdown cut it short at once.
    "run" at the start, "edited" on a spec edit, "stop" otherwise."""
    while (wait := due - time.time()) > 0:
        await stopped.wait(min(wait, CONFIG.tick_seconds))
        if stopped or not _acting():
            return "stop"
        if meta.get("generation") != generation:
            return "edited"
    return "run"


def _not_ready(status: dict[str, Any]) -> bool:
    return any(c.get("type") == health.READY and c.get("status") != "True" for c in status.get("conditions") or [])


def _forget_secrets(secrets: SecretCache | None, namespace: str, spec: PolicySpec) -> None:
    """Read the policy's Secrets again next cycle (a fixed or rotated key is picked up at once)."""
    if secrets is None:
        return
    auth = spec.prefect.auth
    refs = [auth.api_key_secret_ref, auth.basic_auth_secret_ref] if auth else []
    refs.append(spec.ecs.credentials_secret_ref if spec.ecs else None)
    for ref in refs:
        if ref is not None:
            secrets.forget(namespace, ref.name)


def _interval_seconds(spec: Any) -> float:
    """The spec's interval; the fallback for one that does not parse (the cycle reports it)."""
    try:
        seconds = parse_duration(str((spec or {}).get("interval") or "30s")).total_seconds()
    except ValueError:
        return FALLBACK_INTERVAL.total_seconds()
    return seconds if seconds > 0 else FALLBACK_INTERVAL.total_seconds()
