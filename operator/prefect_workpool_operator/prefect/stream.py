"""Prefect's event stream, one subscription per server and credentials, feeding read caches.

Each policy's pool observation is served from a cache (``PoolCache``) that the stream
invalidates part by part; ``core.freshness`` says when a part must be read again
(events, due times, worker heartbeat deadlines, resync, a stream gap). Protocol of
``<apiUrl>/events/out`` (prefect 3.8 ``server/api/events.py`` and
``server/utilities/subscriptions.py``; Cloud the same): the ``prefect`` subprotocol,
then ``{"type": "auth", "token": …}`` answered by ``{"type": "auth_success"}``, then
one ``{"type": "filter", "filter": <EventFilter>, "backfill": …}``; events arrive as
``{"type": "event", "event": …}``. The server applies the filter's ``occurred`` window
to live events too, so ``until`` is set far ahead.

A dropped or never-opened stream makes every cached part unservable (the epoch
changes), so the cycle reads in full: failure means more requests, never stale data.
Connecting (TCP, TLS, the HTTP upgrade and the auth answer) is bounded by
``CONNECT_TIMEOUT``: a server that accepts and never answers would otherwise hold the
attempt for aiohttp's 300 s default; the stream counts as down (full reads) meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from prefect_workpool_operator.core import freshness
from prefect_workpool_operator.core.freshness import Freshness

log = logging.getLogger(__name__)

HEARTBEAT = 10.0  # websocket ping interval: a silently dead connection is noticed within ~1.5×
CONNECT_TIMEOUT = 10.0
# The server subscribes right after it receives the filter; reads count as covered only
# once this has passed (events from before are in every read started after it).
LIVE_GRACE = 1.0
BACKFILL = timedelta(seconds=30)  # replayed on (re)connect: only ever extra invalidations
MAX_BACKOFF = 30.0
FIRST_SUBSCRIPTION_WAIT = 3.0


@dataclass
class PoolCache:
    """One policy's cached pool observation, part by part (core.freshness)."""

    stream: EventStream | None
    resync: timedelta
    state: Freshness = field(default_factory=Freshness)
    values: dict[str, Any] = field(default_factory=dict)
    served: int = 0  # parts served from the cache (for benchmarks)
    read: int = 0  # parts read from Prefect
    counts_version: int = 0  # reads of the run counts so far

    def __hash__(self) -> int:  # registered in a WeakSet
        return id(self)

    def touch(self, parts: frozenset[str], recheck_at: frozenset[datetime] = frozenset()) -> None:
        self.state = freshness.touched(self.state, parts, recheck_at=recheck_at)

    def epoch(self) -> int | None:
        if self.stream is None:
            return None
        self.stream.ensure_running()
        return self.stream.epoch

    def needed(self, now: datetime, lookahead: timedelta = timedelta(0)) -> frozenset[str]:
        counts = self.values.get(freshness.COUNTS)  # (late, pending, running, Upcoming | None)
        parts = freshness.needed(self.state, epoch=self.epoch(), now=now, resync=self.resync)
        if lookahead and counts is not None and (
                counts[3] is None or freshness.upcoming_count(counts[3], now, lookahead) is None):
            parts |= {freshness.COUNTS}  # the cached list does not cover this lookahead
        return parts

    async def first_subscription(self) -> None:
        """While the stream's first subscription is being made (a second or so), wait for it:
        reads made before it count for nothing, so a starting fleet would read everything twice."""
        if self.stream is None:
            return
        self.stream.ensure_running()
        deadline = asyncio.get_running_loop().time() + FIRST_SUBSCRIPTION_WAIT
        while (self.stream.epoch is None and self.stream.failures == 0 and self.stream.connects <= 1
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.1)


class EventStream:
    """One ``/events/out`` subscription; runs until closed, reconnecting with backoff."""

    def __init__(self, api_url: str, auth_header: str | None, session: aiohttp.ClientSession) -> None:
        self.url = _ws_url(api_url) + "/events/out"
        self._auth_header = auth_header
        self._session = session
        self._listeners: dict[str, weakref.WeakSet[PoolCache]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscriptions = 0
        self._live: int | None = None
        self._live_at = 0.0
        self.connects = 0
        self.events = 0
        self.failures = 0
        self.connect_timeout = CONNECT_TIMEOUT
        self._closed = False

    @property
    def epoch(self) -> int | None:
        """The live subscription's number; None while down or within its grace."""
        if self._live is None or asyncio.get_running_loop().time() < self._live_at:
            return None
        return self._live

    @property
    def unused(self) -> bool:
        return bool(self._listeners) and not any(len(caches) for caches in self._listeners.values())

    def listen(self, pool: str, cache: PoolCache) -> None:
        self._listeners.setdefault(pool, weakref.WeakSet()).add(cache)
        self.ensure_running()

    def ensure_running(self) -> None:
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def dispatch(self, event: dict[str, Any]) -> None:
        self.events += 1
        now = datetime.now(timezone.utc)
        recheck_at = frozenset(now + later for later in freshness.recheck_after(event))
        for pool, parts in freshness.event_effects(event).items():
            for cache in list(self._listeners.get(pool, ())):
                cache.touch(parts, recheck_at)

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            connects = self.connects
            try:
                await self._subscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: down until the next attempt, reads in full
                self.failures += 1
                level = logging.WARNING if self.failures == 1 else logging.DEBUG
                log.log(level, "Prefect event stream %s unavailable (%s); reading Prefect in full until it is back",
                        _safe(self.url), _describe(exc))
            finally:
                self._live = None
            if self.connects > connects:
                backoff = 1.0  # it was live: a drop, not a server refusing us
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _subscribe(self) -> None:
        headers = {"Authorization": self._auth_header} if self._auth_header else {}
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session.ws_connect(
                    self.url, protocols=("prefect",), headers=headers, heartbeat=HEARTBEAT,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.connect_timeout),
                )
        except TimeoutError:
            raise ConnectionError(f"no handshake within {self.connect_timeout:g}s") from None
        async with ws:
            await ws.send_json({"type": "auth", "token": _token(self._auth_header)})
            answer = await ws.receive(timeout=self.connect_timeout)
            if answer.type != aiohttp.WSMsgType.TEXT or json.loads(answer.data).get("type") != "auth_success":
                raise ConnectionError(f"authentication refused ({answer.type.name})")
            now = datetime.now(timezone.utc)
            await ws.send_json({
                "type": "filter",
                "filter": {"event": {"prefix": list(freshness.STREAM_PREFIXES)},
                           "occurred": {"since": (now - BACKFILL).isoformat(),
                                        "until": (now + timedelta(days=3650)).isoformat()}},
                "backfill": True,
            })
            self._subscriptions += 1
            self._live, self._live_at = self._subscriptions, asyncio.get_running_loop().time() + LIVE_GRACE
            self.connects += 1
            if self.failures:
                log.info("Prefect event stream %s is back", _safe(self.url))
                self.failures = 0
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                try:
                    data = json.loads(message.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("type") == "event" and isinstance(data.get("event"), dict):
                    self.dispatch(data["event"])
            raise ConnectionError(f"closed by the server ({ws.close_code})")

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._live = None


class EventStreams:
    """The streams of one operator process: one per Prefect API URL and credentials."""

    def __init__(self, resync: timedelta = freshness.DEFAULT_RESYNC) -> None:
        self.resync = resync
        self._streams: dict[tuple[str, str | None], EventStream] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def stream_for(self, api_url: str, auth_header: str | None) -> EventStream:
        key = (api_url.rstrip("/"), auth_header)
        stream = self._streams.get(key)
        if stream is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            stream = self._streams[key] = EventStream(api_url, auth_header, self._session)
        return stream

    def cache(self, api_url: str, auth_header: str | None, pool: str) -> PoolCache:
        stream = self.stream_for(api_url, auth_header)
        cache = PoolCache(stream, self.resync)
        stream.listen(pool, cache)
        self._close_unused()
        return cache

    def _close_unused(self) -> None:
        """Streams no cache listens to any more (credentials rotated, policies deleted) are closed."""
        for key, stream in list(self._streams.items()):
            if stream.unused:
                del self._streams[key]
                task = asyncio.get_running_loop().create_task(stream.aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    @property
    def streams(self) -> list[EventStream]:
        return list(self._streams.values())

    async def aclose(self) -> None:
        for stream in self._streams.values():
            await stream.aclose()
        for task in list(self._closing):
            await task
        if self._session is not None:
            await self._session.close()


def _token(auth_header: str | None) -> str | None:
    """The auth message's token: Cloud's API key, or a self-hosted server's ``user:pass``."""
    if not auth_header:
        return None
    scheme, _, value = auth_header.partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode()
        except ValueError:
            return None
    return value


def _ws_url(api_url: str) -> str:
    return api_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)


def _safe(url: str) -> str:
    """Scheme, host and path: never userinfo or a query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"handshake answered HTTP {exc.status}"
    return type(exc).__name__ + (f": {exc}" if isinstance(exc, ConnectionError) else "")
