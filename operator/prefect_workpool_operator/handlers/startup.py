"""kopf glue: the operator's start-up and shutdown, once per process.

kopf's settings, the login (one set of credentials for kopf and our own client), the
shard's Lease election thread, the probe server, metrics and the shared clients, and
their cleanup. The per-policy handlers are ``handlers/policy.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import Any

import kopf

from prefect_workpool_operator import EVENT_SOURCE, GROUP
from prefect_workpool_operator.config import load_config, quiet_libraries
from prefect_workpool_operator.core.readiness import Facts, Verdict, decide
from prefect_workpool_operator.handlers.probes import ProbeServer
from prefect_workpool_operator.kube.api import KubeClient, credentials, load_configuration
from prefect_workpool_operator.kube.lease import ElectionThread, LeaseElector
from prefect_workpool_operator.kube.secrets import SecretCache
from prefect_workpool_operator.metrics import OperatorMetrics
from prefect_workpool_operator.prefect.http import PrefectHttp
from prefect_workpool_operator.prefect.stream import EventStreams

CONFIG = load_config()
FINALIZER = f"{GROUP}/finalizer"
_connection: list[Any] = []  # the kubernetes.aio Configuration the login handler loaded (kopf uses the same)
_STARTED_MONOTONIC = time.monotonic()
_login_error: list[str] = []  # why our login handler failed last (readiness); empty once it succeeds
_given: list[dict[str, Any]] = []  # the credentials last handed to kopf
_refused_since: list[float] = []  # since when kopf has been asking again for credentials it was refused
# kopf asks for credentials again only after a 401, and exits when given the same ones back:
# wait (unready, /readyz says why) for new ones — a rotated token, a fixed kubeconfig —
# for this long, then hand them back and let kopf exit (a restart clears a transient refusal).
REFUSED_RETRY_SECONDS = 10.0
REFUSED_GIVE_UP_SECONDS = 300.0
# Running cycles of every policy (handlers/policy.py adds them): cancelled when leadership is lost.
running_cycles: set[asyncio.Future[Any]] = set()


def _cancel_cycles() -> None:
    for cycle in list(running_cycles):
        cycle.cancel()


# One Lease per shard: only its holder runs cycles (docs/design.md, "More than one replica").
ELECTOR = LeaseElector(
    namespace=CONFIG.lease_namespace, name=CONFIG.lease_name, identity=CONFIG.identity,
    lease_seconds=CONFIG.lease_seconds, renew_deadline=CONFIG.renew_deadline_seconds,
    retry_seconds=CONFIG.retry_seconds, on_lost=_cancel_cycles,
) if CONFIG.leader_election else None
# Its own thread, event loop and connection: renewals never queue behind the fleet's traffic.
ELECTION = ElectionThread(ELECTOR) if ELECTOR is not None else None


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # A deleted policy's timer exits as soon as its cycle is cancelled: notice it at once.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 1.0
    quiet_libraries()  # also under `kopf run -m`, which skips our __main__
    # Keep kopf's bookkeeping in annotations of our own prefix; status is ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # Only our explicit Events (on change) and kopf's own warnings become Events.
    settings.posting.level = logging.WARNING
    # Events name the operator, not kopf (kubectl describe's "From" column is the source component).
    settings.posting.reporting_component = EVENT_SOURCE
    settings.posting.reporting_instance = CONFIG.identity
    settings.posting.event_name_prefix = f"{EVENT_SOURCE}-"
    # Re-list periodically so a silently dropped watch cannot stall the operator.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    if CONFIG.liveness_endpoint:  # before login: /healthz answers, /readyz says why not ready
        memo.probes = ProbeServer(CONFIG.liveness_endpoint, health=_health, readiness=_readiness)
        await memo.probes.start()
    memo.metrics = OperatorMetrics()
    if CONFIG.metrics_port:
        memo.metrics.serve(CONFIG.metrics_port)
    memo.http = PrefectHttp(
        max_connections=CONFIG.prefect_max_connections,
        event_hooks={"response": [memo.metrics.on_prefect_response]},
        events=EventStreams(timedelta(seconds=CONFIG.prefect_resync_seconds)) if CONFIG.prefect_events else None,
    )
    # Per-object memos are shallow copies of this one: a dict here is shared by all
    # policies, so they share one Kubernetes client and Secret cache (built once logged in).
    memo.shared = {}
    if ELECTION is not None:
        memo.shared["elector"] = asyncio.ensure_future(_elect(ELECTION, memo))


def kube_client(memo: kopf.Memo) -> KubeClient | None:
    """The shared Kubernetes client and Secret cache, on the login's current credentials."""
    if not _connection:
        return None
    kube: KubeClient | None = memo.shared.get("kube")
    if kube is None:
        kube = memo.shared["kube"] = KubeClient(_connection[0])
        memo.shared["secrets"] = SecretCache(kube, mode=CONFIG.secret_watch, fallback_seconds=CONFIG.secret_cache_seconds)
    else:
        kube.use(_connection[0])  # kopf logged in again (e.g. a 401): the new credentials from now on
    return kube


async def _elect(election: ElectionThread, memo: kopf.Memo) -> None:
    """Take part in the shard's election once kopf has logged in (login follows startup)."""
    while not _connection:
        await asyncio.sleep(0.1)
    gauge = memo.metrics.leader.labels(CONFIG.shard_name)
    gauge.set(0)
    election.start(_connection[0])
    while True:  # the gauge follows the role; new credentials follow kopf's logins
        gauge.set(1 if election.elector.is_leader else 0)
        election.use(_connection[0])
        await asyncio.sleep(0.5)


def _health() -> tuple[bool, dict[str, Any]]:
    """/healthz: answered by this event loop; fails only if the election thread died."""
    body: dict[str, Any] = {"leader": leader_probe()}
    if ELECTION is not None and ELECTION.failed:
        body["problem"] = "the Lease election thread stopped"
        return False, body
    return True, body


def _readiness() -> tuple[Verdict, dict[str, Any]]:
    """/readyz: logged in and the shard's Lease reached recently (core.readiness)."""
    facts = Facts(
        now=time.monotonic(), started=_STARTED_MONOTONIC, login_error=_login_error[0] if _login_error else None,
        logged_in=bool(_connection), election=ELECTOR is not None, lease_seconds=CONFIG.lease_seconds,
        lease_reached=ELECTOR.reached if ELECTOR else None, lease_problem=ELECTOR.problem if ELECTOR else None,
        lease_status=ELECTOR.problem_status if ELECTOR else None,
    )
    return decide(facts), leader_probe()


@kopf.on.probe(id="leader")
def leader_probe(**_: Any) -> dict[str, Any]:
    """Shown in /healthz: this replica's shard and role (both roles are healthy)."""
    return {"shard": CONFIG.shard_name, "pod": CONFIG.identity, "role": ELECTOR.role if ELECTOR else "leader"}


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """One login source for kopf and the operator's own client: the official client's loader
    (in-cluster ServiceAccount, else the kubeconfig)."""
    try:
        configuration = await load_configuration()
    except Exception as exc:
        _login_error[:] = [f"no credentials ({type(exc).__name__}: {str(exc)[:200]})"]
        raise
    info = await credentials(configuration)
    if _given and info == _given[0]:
        _refused_since[:] = _refused_since or [time.monotonic()]
        _login_error[:] = ["the API server refused the credentials (HTTP 401)"]
        if time.monotonic() - _refused_since[0] < REFUSED_GIVE_UP_SECONDS:
            raise kopf.TemporaryError("the API server refused the credentials (HTTP 401); waiting for new ones",
                                      delay=REFUSED_RETRY_SECONDS)
    else:
        _refused_since.clear()
        _login_error.clear()
    _given[:] = [info]
    _connection[:] = [configuration]
    return kopf.ConnectionInfo(**info)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    # Timers are stopped by now (their cycles cancelled): hand the Lease over at once.
    _cancel_cycles()
    election = memo.shared.get("elector")
    if election is not None:
        election.cancel()
        await asyncio.wait({election}, timeout=1.0)
    if ELECTION is not None:
        await ELECTION.stop()  # releases the Lease if held
    if memo.shared.get("secrets") is not None:
        await memo.shared["secrets"].aclose()
    if memo.shared.get("kube") is not None:
        await memo.shared["kube"].aclose()
    if memo.get("http") is not None:
        await memo.http.aclose()
    if memo.get("probes") is not None:
        await memo.probes.aclose()
