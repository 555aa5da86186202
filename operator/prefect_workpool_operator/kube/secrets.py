"""Secrets for the cycles, served from list+watch (an informer), with GET as the fallback.

A watch starts the first time a cycle reads a Secret of its scope: a whole namespace
(``mode="namespace"``: one watch however many Secrets the policies there use) or one
Secret (``mode="name"``: a ``metadata.name`` field selector, which RBAC ``resourceNames``
can allow — the chart's ``rbac.secretNames``). It lists, then watches from the list's
resourceVersion (bookmarks on; the server ends each watch after ``WATCH_SECONDS`` and it
resumes from the last version seen); a 410 Gone lists again. While a scope is listed and
watched its Secrets are served from memory and a change or deletion is seen as soon as the
event arrives. While it is not (starting, broken, refused by RBAC, ``mode="off"``), a read
GETs and keeps the answer ``fallback_seconds`` at most: never stale for longer.

A scope none of whose Secrets was read for ``idle_seconds`` (its policies deleted, or
pointed at other Secrets) stops its watch and drops what it kept: every policy reads its
Secrets each cycle, so only a scope no policy uses stays unread that long (an interval
longer than that restarts the scope's list+watch at its next read, nothing worse).

Memory: only Secrets a policy has read, and of those only the keys read (their base64
values) plus the names of the other keys (for the "keys: …" message); every other Secret
in a watched namespace is parsed from the stream and dropped. Values never reach a log,
an exception or a metric: errors carry the Secret's namespace, name and key only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes.aio.client import CoreV1Api

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.secret_values import SecretValueError, decode_secret
from prefect_workpool_operator.kube.api import KubeClient, SecretError, read_json

log = logging.getLogger(__name__)

MODES = ("namespace", "name", "off")
# The server ends each watch after this (kopf's own watches use the same); a connection that
# died silently (no reset) is noticed by then + 30 s, and its Secrets are then read with GET.
WATCH_SECONDS = 300
REQUEST_SECONDS = 10.0
LIST_PAGE = 250
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
GETS_IN_FLIGHT = 8  # a fleet's first cycles would otherwise open a connection per Secret at once
FORBIDDEN_RETRY_SECONDS = 300.0  # RBAC without list/watch: GET only, and ask again this often
# A watch failing this often in a row from one version lists afresh: e.g. a server answering
# 500 ("PrevKv=nil") for a revision whose predecessor etcd compacted, again at every retry.
RELIST_AFTER_FAILURES = 3
IDLE_SECONDS = 3600.0  # a scope unread this long is no policy's: its watch stops


@dataclass
class _Secret:
    keys: frozenset[str]  # every key the Secret has
    values: dict[str, str]  # base64 values of the keys a policy read
    confirmed: float  # monotonic: when a list, watch event or GET last showed it
    version: int  # its resourceVersion (0 if not a number): an older answer never replaces a newer


@dataclass
class _Scope:
    namespace: str
    name: str | None  # one Secret (field selector), or None for the namespace
    synced: bool = False  # listed, and a watch from the list's version (or a later one) is open
    resource_version: str | None = None
    task: asyncio.Task[None] | None = None
    failures: int = 0
    forbidden_logged: bool = False
    names: set[str] = field(default_factory=set)  # the Secrets read in this scope
    last_read: float = 0.0  # monotonic
    idle_check: asyncio.TimerHandle | None = None


class _Gone(Exception):
    """410: the watch's resourceVersion is too old; list again."""


class SecretCache:
    """Reads one key of a Secret; see the module docstring."""

    def __init__(self, kube: KubeClient, *, mode: str = "namespace", fallback_seconds: float = 300.0,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        if mode not in MODES:
            raise ValueError(f"secret watch mode must be one of {', '.join(MODES)}")
        self._kube = kube
        self.mode = mode
        self._fallback_seconds = fallback_seconds
        self._idle_seconds = idle_seconds
        self._secrets: dict[tuple[str, str], _Secret] = {}
        self._wanted: dict[tuple[str, str], set[str]] = {}  # keys read, per Secret
        self._reading: dict[tuple[str, str], asyncio.Future[dict[str, str]]] = {}
        self._scopes: dict[tuple[str, str | None], _Scope] = {}
        self.requests: Counter[str] = Counter()  # get / list / watch requests sent (tests, benchmark)
        self._get_slots = asyncio.Semaphore(GETS_IN_FLIGHT)

    # -- reads ------------------------------------------------------------------------

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        where = f"Secret {namespace}/{name}"
        ref = (namespace, name)
        scope = self._scope_for(namespace, name)
        entry = self._secrets.get(ref)
        if entry is None or not self._fresh(entry, scope) or (key in entry.keys and key not in entry.values):
            self._wanted.setdefault(ref, set()).add(key)  # before the GET: events during it keep the key
            data = await self._get_shared(namespace, name)
            keys, encoded = frozenset(data), data.get(key)
        else:
            keys, encoded = entry.keys, entry.values.get(key)
        if encoded is None:
            listed = ", ".join(sorted(keys)) or "none"
            raise SecretError(health.SECRET_KEY_NOT_FOUND, f"{where} has no key {key!r} (keys: {listed})")
        try:
            return decode_secret(base64.b64decode(encoded))
        except (SecretValueError, ValueError) as exc:  # ValueError: not base64 (never from a real API server)
            problem = str(exc) if isinstance(exc, SecretValueError) else "is not base64"
            raise SecretError(health.SECRET_INVALID, f"{where} key {key!r} {problem}") from None

    def forget(self, namespace: str, name: str) -> None:
        """Read it afresh next time — unless a watch keeps it current anyway."""
        scope = self._scopes.get(self._scope_key(namespace, name))
        if scope is None or not scope.synced:
            self._secrets.pop((namespace, name), None)

    def synced(self, namespace: str, name: str) -> bool:
        """Whether this Secret is served by a live watch now (tests, /healthz)."""
        scope = self._scopes.get(self._scope_key(namespace, name))
        return scope is not None and scope.synced

    def _fresh(self, entry: _Secret, scope: _Scope | None) -> bool:
        if scope is not None and scope.synced:
            return True
        return time.monotonic() < entry.confirmed + self._fallback_seconds

    async def _get_shared(self, namespace: str, name: str) -> dict[str, str]:
        """One GET for concurrent readers; the answer kept for the keys wanted (a failure never is)."""
        ref = (namespace, name)
        pending = self._reading.get(ref)
        if pending is not None and not pending.cancelled():
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._reading[ref] = future
        try:
            data, version = await self._get(namespace, name)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            self._secrets.pop(ref, None)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(data)
        finally:
            if self._reading.get(ref) is future:
                del self._reading[ref]
        self._store(ref, data, version)
        return data

    async def _get(self, namespace: str, name: str) -> tuple[dict[str, str], int]:
        where = f"Secret {namespace}/{name}"
        try:
            async with self._get_slots:
                self.requests["get"] += 1
                status, obj = await read_json(CoreV1Api(self._kube.api).read_namespaced_secret_without_preload_content(
                    name, namespace, _request_timeout=REQUEST_SECONDS))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} could not be read: {type(exc).__name__}") from None
        if status == 404:
            raise SecretError(health.SECRET_NOT_FOUND, f"{where} does not exist")
        if status == 403:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} is not readable by the operator (RBAC: 403)")
        if obj is None:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} could not be read: HTTP {status}")
        return dict(obj.get("data") or {}), _version(obj)

    def _store(self, ref: tuple[str, str], data: dict[str, str], version: int) -> None:
        old = self._secrets.get(ref)
        if old is not None and version < old.version:
            return  # e.g. a list answered before a GET that saw a newer Secret
        wanted = self._wanted.get(ref, set())
        self._secrets[ref] = _Secret(frozenset(data), {k: data[k] for k in wanted if k in data}, time.monotonic(), version)

    # -- watches ----------------------------------------------------------------------

    def _scope_key(self, namespace: str, name: str) -> tuple[str, str | None]:
        return (namespace, name if self.mode == "name" else None)

    def _scope_for(self, namespace: str, name: str) -> _Scope | None:
        if self.mode == "off":
            return None
        key = self._scope_key(namespace, name)
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = _Scope(namespace, key[1])
            scope.task = asyncio.ensure_future(self._informer(scope))
            scope.idle_check = asyncio.get_running_loop().call_later(self._idle_seconds, self._stop_if_idle, key)
        scope.names.add(name)
        scope.last_read = time.monotonic()
        return scope

    def watching(self, namespace: str, name: str) -> bool:
        """Whether a watch scope for this Secret exists (running or retrying)."""
        return self._scope_key(namespace, name) in self._scopes

    def _stop_if_idle(self, key: tuple[str, str | None]) -> None:
        scope = self._scopes.get(key)
        if scope is None:
            return
        idle_until = scope.last_read + self._idle_seconds
        if time.monotonic() < idle_until:  # read since: look again when it could be idle
            scope.idle_check = asyncio.get_running_loop().call_later(
                idle_until - time.monotonic(), self._stop_if_idle, key)
            return
        del self._scopes[key]
        if scope.task is not None:
            scope.task.cancel()
        for name in scope.names:  # nobody reads them: keep nothing (a value held is a value exposed)
            self._secrets.pop((scope.namespace, name), None)
            self._wanted.pop((scope.namespace, name), None)
        log.debug("stopped watching Secrets in %s%s: none read for %.0f s", scope.namespace,
                  f" ({scope.name})" if scope.name else "", self._idle_seconds)

    def _selector(self, scope: _Scope) -> dict[str, Any]:
        return {"field_selector": f"metadata.name={scope.name}"} if scope.name else {}

    async def _informer(self, scope: _Scope) -> None:
        """List, then watch from the list's version; again after a 410; back off after errors."""
        where = f"Secrets in {scope.namespace}" + (f" ({scope.name})" if scope.name else "")
        while True:
            try:
                if scope.resource_version is None:
                    await self._list(scope)
                await self._watch(scope)
            except asyncio.CancelledError:
                scope.synced = False
                raise
            except _Gone:
                scope.synced, scope.resource_version = False, None  # too old: list again at once
                continue
            except Exception as exc:  # reads fall back to GET meanwhile
                scope.synced = False
                forbidden = getattr(exc, "status", None) == 403
                if forbidden or scope.failures + 1 >= RELIST_AFTER_FAILURES:
                    scope.resource_version = None  # else resume the watch from the last version seen
                if forbidden and not scope.forbidden_logged:
                    scope.forbidden_logged = True
                    log.warning("cannot list/watch %s (RBAC: 403): reading them with GET, cached %.0f s",
                                where, self._fallback_seconds)
                elif not forbidden:
                    log.debug("watch of %s failed: %s", where, type(exc).__name__)
                delay = FORBIDDEN_RETRY_SECONDS if forbidden else BACKOFF[min(scope.failures, len(BACKOFF) - 1)]
                scope.failures += 1
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    async def _list(self, scope: _Scope) -> None:
        seen: set[str] = set()
        token: str | None = None
        while True:
            self.requests["list"] += 1
            page = await self._request(scope, limit=LIST_PAGE, **({"_continue": token} if token else {}))
            for item in page.get("items") or []:
                name = (item.get("metadata") or {}).get("name", "")
                seen.add(name)
                self._apply(scope.namespace, name, item)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        listed = _version(page)
        for name in list(scope.names):  # read before, gone now
            if name not in seen:
                self._delete(scope.namespace, name, listed)
        scope.resource_version = (page.get("metadata") or {}).get("resourceVersion")

    async def _request(self, scope: _Scope, **params: Any) -> dict[str, Any]:
        status, page = await read_json(CoreV1Api(self._kube.api).list_namespaced_secret_without_preload_content(
            scope.namespace, _request_timeout=REQUEST_SECONDS * 3, **self._selector(scope), **params))
        if status == 410:
            raise _Gone()
        if page is None:
            raise _HttpError(status)
        return page

    async def _watch(self, scope: _Scope) -> None:
        self.requests["watch"] += 1
        response = await CoreV1Api(self._kube.api).list_namespaced_secret_without_preload_content(
            scope.namespace, watch=True, allow_watch_bookmarks=True, resource_version=scope.resource_version,
            timeout_seconds=WATCH_SECONDS, _request_timeout=WATCH_SECONDS + 30.0, **self._selector(scope))
        async with response:
            if response.status == 410:
                raise _Gone()
            if response.status != 200:
                raise _HttpError(response.status)
            scope.synced = True
            while line := await response.content.readline():
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise _Gone() if obj.get("code") == 410 else _HttpError(int(obj.get("code") or 0))
                meta = obj.get("metadata") or {}
                if kind in ("ADDED", "MODIFIED"):
                    self._apply(scope.namespace, meta.get("name", ""), obj)
                elif kind == "DELETED":
                    self._delete(scope.namespace, meta.get("name", ""), _version(obj))
                scope.resource_version = meta.get("resourceVersion") or scope.resource_version
                scope.failures = 0  # working: not on the 200 alone, which can carry just an ERROR
        # the server ended the watch (timeout_seconds): resume from the last version seen
        scope.failures = 0

    def _apply(self, namespace: str, name: str, obj: dict[str, Any]) -> None:
        ref = (namespace, name)
        if ref in self._wanted:  # others are dropped here: never stored
            self._store(ref, dict(obj.get("data") or {}), _version(obj))

    def _delete(self, namespace: str, name: str, version: int) -> None:
        ref = (namespace, name)
        old = self._secrets.get(ref)
        if old is not None and version >= old.version:
            del self._secrets[ref]  # the next read GETs: SecretNotFound, or the Secret made again

    async def aclose(self) -> None:
        for scope in self._scopes.values():
            if scope.idle_check is not None:
                scope.idle_check.cancel()
        tasks = [s.task for s in self._scopes.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def _version(obj: dict[str, Any]) -> int:
    """An object's or list's resourceVersion as a number. Kubernetes calls it opaque; every
    etcd-backed server gives etcd's revision, and anything else reads as 0 (then the newest
    answer to arrive wins, as without the comparison)."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else 0


class _HttpError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
