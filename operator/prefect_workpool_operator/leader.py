"""Leader election on a ``coordination.k8s.io`` Lease, one per shard (docs/design.md).

controller-runtime's rules, over kopf's ``ConnectionInfo`` and httpx (like kube_api):

- every ``retry_seconds`` each replica reads the Lease; the holder renews it, a standby
  takes it only when it is free (empty holder) or when its record has not changed for
  ``leaseDurationSeconds`` *as timed on the standby's own clock* (no clock comparison);
- every write carries the ``resourceVersion`` read: of two replicas racing for the Lease
  the API server accepts one and refuses the other (409) — that is the fencing;
- a leader whose last successful renewal was sent more than ``renew_deadline`` ago stops
  acting (``on_lost``) even before it hears from the server, and the renew deadline is
  shorter than the lease, so it has stopped before any standby may take over;
- ``release`` empties the holder so a standby takes over at its next try, not after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)


def _now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime


def _problem(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return f"HTTP {code}" + (" Forbidden (RBAC: the Lease's Role)" if code == 403 else "")
    return type(exc).__name__


class LeaseElector:
    """Holds (or waits for) one Lease; ``is_leader`` says whether this replica may act now."""

    def __init__(
        self, *, namespace: str, name: str, identity: str, lease_seconds: float = 15.0,
        renew_deadline: float = 10.0, retry_seconds: float = 2.0, on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry_seconds = lease_seconds, renew_deadline, retry_seconds
        self._on_lost = on_lost
        self._http: httpx.AsyncClient | None = None
        self._server = ""
        self._renewed_at: float | None = None  # monotonic time the last successful write was *sent*
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen
        self._observed_at = 0.0  # when it was first seen unchanged (our clock)
        self.last_contact: float | None = None  # monotonic time of the last answer from the API server
        self.transitions = 0  # times this replica became leader

    @property
    def url(self) -> str:
        return f"{self._server}/apis/coordination.k8s.io/v1/namespaces/{quote(self.namespace, safe='')}/leases"

    def connect(self, http: httpx.AsyncClient, server: str) -> None:
        """Use this client (kopf's credentials) from the next request on."""
        self._http, self._server = http, server.rstrip("/")

    @property
    def http(self) -> httpx.AsyncClient | None:
        return self._http

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
                try:
                    await asyncio.wait_for(self._try_once(), timeout=self.retry_seconds)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the next try may succeed; the watchdog guards the deadline
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
        self._on_lost()

    async def _try_once(self) -> None:
        assert self._http is not None, "connect() first"
        sent = time.monotonic()
        response = await self._http.get(f"{self.url}/{quote(self.name, safe='')}")
        self.last_contact = time.monotonic()
        if response.status_code == 404:
            spec = self._spec(None)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
            created = await self._http.post(self.url, json=body)
            self._written(created, sent)
            return
        response.raise_for_status()
        lease = response.json()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), spec.get("acquireTime"))
            if record != self._observed:
                self._observed, self._observed_at = record, sent
            if self._renewed_at is not None:
                self._lose(f"the Lease is held by {holder}")
            duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if sent < self._observed_at + duration:
                return  # held, and renewed within its duration as far as we can see
        lease["spec"] = self._spec(spec)
        updated = await self._http.put(f"{self.url}/{quote(self.name, safe='')}", json=lease)
        self._written(updated, sent)

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = _now_micro()
        spec = dict(old or {})
        taking = old is None or (old.get("holderIdentity") or "") != self.identity
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(round(self.lease_seconds)), renewTime=now)
        if taking:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int((old or {}).get("leaseTransitions") or 0) + (1 if old else 0)
        return spec

    def _written(self, response: httpx.Response, sent: float) -> None:
        self.last_contact = time.monotonic()
        if response.status_code == 409:
            return  # another replica wrote first: it holds the Lease now
        response.raise_for_status()
        if self._renewed_at is None:
            self.transitions += 1
            log.info("lease %s/%s: %s is leader", self.namespace, self.name, self.identity)
        self._renewed_at = sent
        self._observed = None

    async def release(self) -> None:
        """Give the Lease up (holder emptied, duration 1 s) so a standby takes it at once."""
        if self._http is None:
            return
        was_leader = self._renewed_at is not None
        self._renewed_at = None
        if not was_leader:
            return
        with contextlib.suppress(httpx.HTTPError):
            url = f"{self.url}/{quote(self.name, safe='')}"
            response = await self._http.get(url, timeout=2.0)
            if response.status_code != 200:
                return
            lease = response.json()
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"].update(holderIdentity="", leaseDurationSeconds=1, renewTime=_now_micro())
            response = await self._http.put(url, json=lease, timeout=2.0)
            if response.status_code == 200:
                log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)
