"""Leader election on a ``coordination.k8s.io`` Lease, one per shard (docs/design.md).

controller-runtime's rules, through the official client's asyncio API (the ``KubeClient``
the Secret cache uses too):

- every ``retry_seconds`` each replica reads the Lease; the holder renews it, a standby
  takes it only when it is free (empty holder) or when its record has not changed for
  ``leaseDurationSeconds`` *as timed on the standby's own clock* (no clock comparison);
- every write carries the ``resourceVersion`` read: of two replicas racing for the Lease
  the API server accepts one and refuses the other (409) — that is the fencing. The leader
  renews without reading first (client-go's fast path: the Lease it last wrote, with that
  write's resourceVersion), so renewing costs one request; a 409 falls back to the read;
- a leader whose last successful renewal was sent more than ``renew_deadline`` ago stops
  acting (``on_lost``) even before it hears from the server, and the renew deadline is
  shorter than the lease, so it has stopped before any standby may take over;
- a leader's renewal may take until that deadline (client-go's rule), not just the retry
  period: a slow API server answers a renewal in 3 s, and cutting it at 2 s only sends it
  again into the same queue until the deadline passes;
- ``release`` empties the holder so a standby takes over at its next try, not after the lease.

``ElectionThread`` runs an elector on a thread of its own, with its own event loop and its
own ApiClient (same login): renewals never wait behind the operator's other Kubernetes
traffic or a busy main loop (1,000 policies recovering at once made the only replica miss
its renew deadline and cancel its cycles).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp
from kubernetes.aio.client import ApiException, Configuration, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta

from prefect_workpool_operator.kube.api import KubeClient

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _problem(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status}" + {403: " Forbidden (RBAC: the Lease's Role)",
                                       401: " Unauthorized (credentials refused)"}.get(exc.status or 0, "")
    return type(exc).__name__


class LeaseElector:
    """Holds (or waits for) one Lease; ``is_leader`` says whether this replica may act now."""

    def __init__(
        self, *, namespace: str, name: str, identity: str, lease_seconds: float = 15.0,
        renew_deadline: float = 10.0, retry_seconds: float = 2.0, on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_seconds = lease_seconds, renew_deadline, retry_seconds
        self.on_lost = on_lost
        self._kube: KubeClient | None = None
        self._written_lease: V1Lease | None = None  # what our last successful write returned (fast-path renewal)
        self._renewed_at: float | None = None  # monotonic time the last successful write was *sent*
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen
        self._observed_at = 0.0  # when it was first seen unchanged (our clock)
        self.last_contact: float | None = None  # monotonic time of the last answer from the API server
        self.transitions = 0  # times this replica became leader
        # For readiness (core.readiness): the last successful read or write of the Lease, and
        # what the last try that failed said (cleared by the next success).
        self.reached: float | None = None
        self.problem: str | None = None
        self.problem_status: int | None = None

    def connect(self, kube: KubeClient) -> None:
        """Use this client (the operator's one login) for every request."""
        self._kube = kube

    @property
    def _api(self) -> CoordinationV1Api:
        assert self._kube is not None, "connect() first"
        return CoordinationV1Api(self._kube.api)

    @property
    def is_leader(self) -> bool:
        return self._renewed_at is not None and time.monotonic() < self._renewed_at + self.renew_deadline

    @property
    def role(self) -> str:
        return "leader" if self.is_leader else "standby"

    async def run(self) -> None:
        """Try to take or renew the Lease every ``retry_seconds``, for ever (cancel to stop)."""
        watchdog = asyncio.ensure_future(self._watch_deadline())
        try:
            while True:
                timeout = self.retry_seconds
                if self._renewed_at is not None:
                    timeout = max(timeout, self._renewed_at + self.renew_deadline - time.monotonic())
                try:
                    await asyncio.wait_for(self._try_once(timeout), timeout=timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next try may succeed; the watchdog guards the deadline
                    self.problem = _problem(exc)
                    self.problem_status = exc.status if isinstance(exc, ApiException) else None
                    log.warning("lease %s/%s: try failed: %s", self.namespace, self.name, _problem(exc))
                await asyncio.sleep(self.retry_seconds)
        finally:
            watchdog.cancel()

    async def _watch_deadline(self) -> None:
        """Stop acting the moment the renew deadline passes, even while a request hangs."""
        while True:
            if self._renewed_at is not None and not self.is_leader:
                self._lose("renew deadline passed")
            await asyncio.sleep(min(0.25, self.retry_seconds))

    def _lose(self, why: str) -> None:
        self._renewed_at = None
        log.warning("lease %s/%s: %s is no longer leader (%s)", self.namespace, self.name, self.identity, why)
        self.on_lost()

    async def _try_once(self, timeout: float) -> None:
        sent = time.monotonic()
        if self._renewed_at is not None and self._written_lease is not None:
            # Fast path: renew what we last wrote; its resourceVersion still fences the write.
            lease = self._written_lease
            lease.spec = self._spec(lease.spec)
            if await self._write(self._api.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=timeout), sent):
                return
        try:
            lease = await self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._reached()
            body = V1Lease(api_version="coordination.k8s.io/v1", kind="Lease",
                           metadata=V1ObjectMeta(name=self.name, namespace=self.namespace), spec=self._spec(None))
            await self._write(self._api.create_namespaced_lease(
                self.namespace, body, _request_timeout=timeout), sent)
            return
        self._reached()
        spec = lease.spec or V1LeaseSpec()
        holder = spec.holder_identity or ""
        if holder and holder != self.identity:
            record = (holder, spec.renew_time, spec.lease_duration_seconds, spec.acquire_time)
            if record != self._observed:
                self._observed, self._observed_at = record, sent
            if self._renewed_at is not None:
                self._lose(f"the Lease is held by {holder}")
            duration = float(spec.lease_duration_seconds or self.lease_seconds)
            if sent < self._observed_at + duration:
                return  # held, and renewed within its duration as far as we can see
        lease.spec = self._spec(spec)
        await self._write(self._api.replace_namespaced_lease(
            self.name, self.namespace, lease, _request_timeout=timeout), sent)

    def _reached(self) -> None:
        self.last_contact = self.reached = time.monotonic()
        self.problem = self.problem_status = None

    def _spec(self, old: V1LeaseSpec | None) -> V1LeaseSpec:
        now = _now()
        taking = old is None or (old.holder_identity or "") != self.identity
        spec = old.model_copy() if old is not None else V1LeaseSpec()
        spec.holder_identity, spec.lease_duration_seconds, spec.renew_time = self.identity, int(round(self.lease_seconds)), now
        if taking:
            spec.acquire_time = now
            spec.lease_transitions = int((old.lease_transitions if old else 0) or 0) + (1 if old else 0)
        return spec

    async def _write(self, request: Any, sent: float) -> bool:
        """Whether the write was accepted (then this replica leads, from ``sent``); 409: someone else wrote."""
        try:
            lease = await request
        except ApiException as exc:
            self.last_contact = time.monotonic()
            self._written_lease = None
            if exc.status == 409:
                self._reached()
                return False  # another replica wrote first (or our fast path was stale): read next
            raise
        self._reached()
        if self._renewed_at is None:
            self.transitions += 1
            log.info("lease %s/%s: %s is leader", self.namespace, self.name, self.identity)
        self._renewed_at = sent
        self._observed = None
        self._written_lease = lease
        return True

    async def release(self) -> None:
        """Give the Lease up (holder emptied, duration 1 s) so a standby takes it at once."""
        if self._kube is None:
            return
        was_leader = self._renewed_at is not None
        self._renewed_at = None
        self._written_lease = None
        if not was_leader:
            return
        # A 409: a renewal of ours that was cancelled in flight still landed after our read
        # (seen on a loaded node: the standby then waited out the whole lease). Read again.
        for _ in range(3):
            try:
                lease = await self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=2.0)
                if lease.spec is None or lease.spec.holder_identity != self.identity:
                    return
                lease.spec.holder_identity, lease.spec.lease_duration_seconds, lease.spec.renew_time = "", 1, _now()
                await self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=2.0)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                problem = _problem(exc)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                problem = type(exc).__name__
            else:
                log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
                return
            break
        else:
            problem = "HTTP 409 three times"
        log.warning("lease %s/%s: not released (%s): a standby takes over once the lease runs out",
                    self.namespace, self.name, problem)


class ElectionThread:
    """Runs a ``LeaseElector`` on a thread of its own: its own event loop and ApiClient.

    The operator's main loop only reads ``elector.is_leader`` (a float compared with the
    clock: safe from any thread); ``on_lost`` is handed to the main loop with
    ``call_soon_threadsafe``; credentials are passed in with ``use`` (kopf logged in again).
    """

    def __init__(self, elector: LeaseElector) -> None:
        self.elector = elector
        self._deliver = elector.on_lost
        elector.on_lost = self._lost
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._configuration: Configuration | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stopping = False

    def _lost(self) -> None:
        if self._main is not None and not self._main.is_closed():
            self._main.call_soon_threadsafe(self._deliver)

    @property
    def failed(self) -> bool:
        """Started, not asked to stop, and its thread is gone (liveness: restart the Pod)."""
        return self._thread is not None and not self._stopping and not self._thread.is_alive()

    def start(self, configuration: Configuration) -> None:
        """Start electing with these credentials (call from the main loop)."""
        self._main = asyncio.get_running_loop()
        self._configuration = configuration
        self._thread = threading.Thread(target=self._main_of_thread, name=f"lease-{self.elector.name}", daemon=True)
        self._thread.start()

    def use(self, configuration: Configuration) -> None:
        """New credentials: the election's own client is rebuilt on them before its next try."""
        self._configuration = configuration

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop electing and release the Lease if held (call from the main loop)."""
        self._stopping = True
        if self._thread is None:
            return
        await asyncio.to_thread(self._started.wait, timeout)
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self._thread.join, timeout)

    def _main_of_thread(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("lease %s/%s: the election thread failed", self.elector.namespace, self.elector.name)
        finally:
            self._started.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._started.set()
        assert self._configuration is not None
        kube = KubeClient(self._configuration)
        self.elector.connect(kube)
        election = asyncio.ensure_future(self.elector.run())
        try:
            while not self._stop.is_set() and not election.done():
                kube.use(self._configuration)  # no-op unless kopf logged in again
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=0.5)
        finally:
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
            await self.elector.release()
            await kube.aclose()
