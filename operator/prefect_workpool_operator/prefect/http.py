"""The connection pools to Prefect that every policy shares (one per server), made so they cannot wedge.

httpcore (1.0.9) leaks a connection for good when a request's pool wait expires just
as the pool hands it a new connection (httpcore issue 1093): once every slot has
leaked, every request answers ``PoolTimeout`` forever (FACTS.md "A shared httpx
client that wedges"). So:

- each Prefect server or Cloud account (``budget_key``) has its own client and its own
  ``max_connections`` slots: a server that answers slowly or never holds only its own
  slots, and requests to the other servers still find theirs (noisy neighbours);
- requests wait for a slot here (an ``asyncio.Semaphore`` of ``max_connections``)
  *before* httpx sees them: httpx always finds a free connection and nothing waits in
  httpcore's pool queue;
- keep-alive = max connections, so idle connections are reused rather than closed and
  reopened for nearly every request;
- a client that still answers ``PoolTimeout`` (which only leaked connections can cause
  now) is replaced by a new one and the old one closed (that server's only);
- one Retry-After pause per Prefect server or Cloud account: a 429 holds back every
  policy on that server, not only the one that got it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from prefect_workpool_operator.prefect.stream import EventStreams

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 50
REPLACE_AFTER_POOL_TIMEOUTS = 3  # in a row, with no answer between them
CLOSE_TIMEOUT = 5.0
DEFAULT_PAUSE = 1.0  # a 429 without Retry-After
# State writes in flight per Prefect server or account, every policy together: the server
# orchestrates each run in turn, CPU-bound (bench/recovery_fleet.py: 1/2/4/8 at once on
# PostgreSQL gain little past 2-4), so more at once only stretch each past its timeout.
WRITE_CONCURRENCY = 4


class SlotTimeout(httpx.TimeoutException):
    """No slot freed up within the request's deadline: the operator is busier than its pool."""


class _Server:
    """One Prefect server's or Cloud account's share: its client and its slots."""

    def __init__(self, client: httpx.AsyncClient, slots: int) -> None:
        self.client = client
        self.slots = asyncio.Semaphore(slots)
        self.pool_timeouts_in_a_row = 0


class PrefectHttp:
    """Bounded, self-healing ``httpx.AsyncClient``s, one per Prefect server, for every ``PrefectClient``."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        event_hooks: dict[str, list[Callable[..., Any]]] | None = None,
        client: httpx.AsyncClient | None = None,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: EventStreams | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections  # per server or account
        self._event_hooks = event_hooks or {}
        self._factory = client_factory or self._default_client
        # A client handed in (tests, benchmarks) is the caller's: used for every server, never replaced or closed.
        self._given = client
        self._servers: dict[str, _Server] = {}
        self._tls: ssl.SSLContext | None = None
        self._clock = clock
        self._paused_until: dict[str, float] = {}
        self._write_slots: dict[str, asyncio.Semaphore] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.in_flight = 0
        self.replacements = 0
        self.pool_timeouts = 0  # PoolTimeout from httpx itself: a leak, never a queue, now
        self.slot_timeouts = 0
        # Prefect's event stream and the read caches it keeps fresh (prefect/stream.py); None: every read is sent.
        self.events = events

    def client_for(self, url: str) -> httpx.AsyncClient:
        """The client requests to this URL's server or account go through."""
        return self._server(budget_key(url)).client

    def _server(self, key: str) -> _Server:
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server(self._given or self._factory(), self.max_connections)
        return server

    def _default_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        # One TLS context for every server's client: each new one would load the CA bundle
        # again (≈ 0.8 MiB and 40 ms of the event loop per server, measured).
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(limits=limits, event_hooks=self._event_hooks, verify=self._tls)

    async def request(
        self, method: str, url: str, *, timeout: float, json: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One request: waits out a Retry-After pause, then for a slot (at most ``timeout``), then sends."""
        key = budget_key(url)
        await self._wait_for_pause(key)
        server = self._server(key)
        try:
            await asyncio.wait_for(server.slots.acquire(), timeout)
        except asyncio.TimeoutError:
            self.slot_timeouts += 1
            raise SlotTimeout(f"no free connection to Prefect within {timeout:g}s") from None
        client = server.client
        self.in_flight += 1
        try:
            response = await client.request(method, url, json=json, headers=headers, timeout=timeout)
        except httpx.PoolTimeout:
            self.pool_timeouts += 1
            server.pool_timeouts_in_a_row += 1
            if server.pool_timeouts_in_a_row >= REPLACE_AFTER_POOL_TIMEOUTS:
                self._replace(server, client)
            raise
        finally:
            self.in_flight -= 1
            server.slots.release()
        server.pool_timeouts_in_a_row = 0
        if response.status_code == 429:
            hint = retry_after_seconds(response)
            self.pause(key, DEFAULT_PAUSE if hint is None else hint)
        return response

    def write_slots(self, url: str) -> asyncio.Semaphore:
        """The state-write slots of this server or account (``budget_key``), shared by every policy."""
        return self._write_slots.setdefault(budget_key(url), asyncio.Semaphore(WRITE_CONCURRENCY))

    def pause(self, key: str, seconds: float) -> None:
        """Hold back every request to this server or account for ``seconds``."""
        until = self._clock() + seconds
        if until > self._paused_until.get(key, 0.0):
            self._paused_until[key] = until

    async def _wait_for_pause(self, key: str) -> None:
        remaining = self._paused_until.get(key, 0.0) - self._clock()
        if remaining > 0:
            # Wait out the server's own hint; the request's timeout starts after it.
            await asyncio.sleep(min(remaining, MAX_PAUSE))

    def _replace(self, server: _Server, wedged: httpx.AsyncClient) -> None:
        if self._given is not None or wedged is not server.client:
            return  # not ours, or another request already replaced it
        log.warning("The Prefect connection pool stopped handing out connections; replacing it")
        server.client = self._factory()
        server.pool_timeouts_in_a_row = 0
        self.replacements += 1
        task = asyncio.get_running_loop().create_task(_close_quietly(wedged))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        if self.events is not None:
            await self.events.aclose()
        if self._given is None:
            for server in self._servers.values():
                await server.client.aclose()
        for task in list(self._closing):
            await task


MAX_PAUSE = 30.0  # the longest Retry-After honoured (Cloud answers seconds)


async def _close_quietly(client: httpx.AsyncClient) -> None:
    try:
        await asyncio.wait_for(client.aclose(), CLOSE_TIMEOUT)
    except Exception:  # a wedged pool may not close cleanly; it is dropped either way
        log.debug("closing a replaced Prefect client failed", exc_info=True)


def budget_key(url: str) -> str:
    """What Prefect rate-limits together: a Cloud account, else the server (scheme, host, port)."""
    parts = urlsplit(url)
    key = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
    segments = parts.path.split("/")
    if "accounts" in segments:
        index = segments.index("accounts")
        if index + 1 < len(segments):
            key += f"/accounts/{segments[index + 1]}"
    return key


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(float(value), MAX_PAUSE) if value is not None else None
    except ValueError:
        return None
