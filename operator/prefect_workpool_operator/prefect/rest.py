"""Async adapter for the Prefect 3 REST API: the request machinery every resource shares.

One shared ``PrefectHttp`` (a bounded connection pool per server, see prefect/http.py) serves
every policy; a client adds a policy's base URL, credentials and timeout. Errors become
``PrefectError`` with a stable reason from ``core.health`` and a message that never
contains credentials. The calls per resource: prefect/pools.py, flow_runs.py, events.py.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.prefect.http import PrefectHttp, SlotTimeout, retry_after_seconds
from prefect_workpool_operator.prefect.stream import PoolCache

TRANSIENT_STATUS = {500, 502, 503, 504}  # 503 is also SQLite's "database is locked"


class PrefectError(OperatorError):
    """A Prefect API failure; ``status_code`` is None when no HTTP answer came."""

    def __init__(
        self, reason: str, message: str, *, retry_after: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after  # the server's Retry-After hint, for the next attempt
        self.status_code = status_code
        self.received = ""  # "HTTP 404 (text/html)": what answered, for NotPrefectApi
        self.cause = ""  # for unreachable: why, without the request (the same each cycle while it lasts)


class PrefectRest:
    """One Prefect API's base URL, credentials and timeout; requests with retries on 5xx/429."""

    def __init__(
        self,
        http: httpx.AsyncClient | PrefectHttp,
        api_url: str,
        *,
        auth_header: str | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.5,
    ) -> None:
        # A bare httpx client (tests, benchmarks) gets its own slots; the operator passes its shared PrefectHttp.
        self._http = http if isinstance(http, PrefectHttp) else PrefectHttp(client=http)
        self.api_url = api_url.rstrip("/")
        self._headers = {"Authorization": auth_header} if auth_header else {}
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._version: str | None = None
        self._version_checked = False
        self.bulk_unsupported = False  # learnt from a 404/405 on bulk_set_state
        self._caches: dict[tuple[str, tuple[str, ...]], PoolCache] = {}

    # -- transport ------------------------------------------------------------------

    async def _request(self, method: str, path: str, json: Any = None, *, replay: bool = True) -> httpx.Response:
        """``replay=False`` (state writes): sent again only when it cannot have reached the
        server's handler (no connection, 429, 503); after a timeout or a cut answer it may have
        been applied, and a guarded write replayed later could catch a run a worker has just
        claimed again (PENDING anew)."""
        url = f"{self.api_url}{path}"
        last: PrefectError | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._delay(attempt, last))
            try:
                response = await self._http.request(method, url, json=json, headers=self._headers, timeout=self._timeout)
            except SlotTimeout:
                # Overloaded here, not there: retrying would only queue more. The next cycle tries again.
                busy = PrefectError(health.UNREACHABLE, f"{method} {self._safe(path)} not sent: the operator's "
                                    f"connections to Prefect were all busy for {self._timeout:g}s")
                busy.cause = f"the operator's connections to Prefect were all busy for {self._timeout:g}s"
                raise busy from None
            except httpx.InvalidURL as exc:
                raise PrefectError(health.INVALID_API_URL, f"apiUrl {self.api_url!r} is not a valid URL: {exc}") from None
            except (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                last = PrefectError(health.UNREACHABLE, f"{method} {self._safe(path)} failed: {type(exc).__name__}")
                last.cause = (f"no answer within {self._timeout:g}s" if isinstance(exc, httpx.TimeoutException)
                              else type(exc).__name__)
                if not replay and not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
                    raise last from None
                continue
            except httpx.UnsupportedProtocol:
                raise PrefectError(health.INVALID_API_URL, f"apiUrl {self.api_url!r} must start with http:// or https://") from None
            if response.status_code in TRANSIENT_STATUS and not replay and response.status_code != 503:
                raise PrefectError(health.SERVER_ERROR, f"{method} {self._safe(path)} answered {_received(response)}"
                                   " (not sent again: it may have been applied)", status_code=response.status_code)
            if response.status_code in TRANSIENT_STATUS or response.status_code == 429:
                reason = health.RATE_LIMITED if response.status_code == 429 else health.SERVER_ERROR
                last = PrefectError(
                    reason, f"{method} {self._safe(path)} answered {_received(response)}",
                    retry_after=retry_after_seconds(response),
                )
                continue
            self._raise_for_status(method, path, response)
            return response
        assert last is not None
        raise last

    def _delay(self, attempt: int, last: PrefectError | None) -> float:
        if last is not None and last.retry_after is not None:
            return last.retry_after
        return self._backoff * (2 ** (attempt - 1)) * (0.5 + random.random())

    def _raise_for_status(self, method: str, path: str, response: httpx.Response) -> None:
        code = response.status_code
        if code < 400:
            return
        where = f"{method} {self._safe(path)}"
        if code == 401:
            raise PrefectError(health.UNAUTHORIZED, f"{where} answered 401: the credentials were refused")
        if code == 403:
            raise PrefectError(health.FORBIDDEN, f"{where} answered 403: the credentials lack permission")
        error = PrefectError(health.BAD_RESPONSE, f"{where} answered HTTP {code}", status_code=code)
        error.received = _received(response)
        raise error

    def _safe(self, path: str) -> str:
        """Host and path only: no query string, no userinfo."""
        parts = urlsplit(self.api_url + path)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    async def _json(self, method: str, path: str, json: Any = None, *, replay: bool = True) -> Any:
        response = await self._request(method, path, json, replay=replay)
        try:
            return response.json()
        except ValueError:
            raise PrefectError(
                health.NOT_PREFECT_API,
                f"{method} {self._safe(path)} answered {_received(response)}, not JSON: apiUrl is not a Prefect API",
            ) from None

    # -- the server ---------------------------------------------------------------------

    async def server_version(self) -> str | None:
        """The server's version (cached per client); None where it is not exposed (Prefect Cloud)."""
        if not self._version_checked:
            await self._check_is_prefect()
            try:
                version = await self._json("GET", "/admin/version")
            except PrefectError as exc:
                if exc.status_code != 404:
                    raise
                version = None  # not exposed by Prefect Cloud: not a reason to stop
            if version is not None and not isinstance(version, str):
                raise PrefectError(health.NOT_PREFECT_API, "GET /admin/version did not answer a version: apiUrl is not a Prefect API")
            if health.server_too_old(version):
                raise PrefectError(
                    health.SERVER_TOO_OLD,
                    f"Prefect server {version} is too old: version {health.MIN_SERVER_MAJOR}.x or newer is required",
                )
            self._version, self._version_checked = version, True
        return self._version

    async def _check_is_prefect(self) -> None:
        """/health is open even with auth on: it tells "not Prefect" apart from "wrong pool"."""
        try:
            response = await self._request("GET", "/health")
        except PrefectError as exc:
            if exc.status_code is None:
                raise
            received = exc.received
        else:
            try:
                if response.status_code == 200 and response.json() is True:
                    return
            except ValueError:
                pass
            received = _received(response)
        raise PrefectError(
            health.NOT_PREFECT_API,
            f"{self._safe('/health')} answered {received}, not a Prefect API's health check: apiUrl should end "
            "in /api (self-hosted) or /api/accounts/<id>/workspaces/<id> (Prefect Cloud)",
        )


def parse_time(value: Any) -> datetime | None:
    """A timestamp from an answer; None when absent or not ISO 8601."""
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _received(response: httpx.Response) -> str:
    """Status and content type (and a redirect's target host), never the body."""
    kind = response.headers.get("content-type", "no content type").split(";")[0].strip() or "no content type"
    text = f"HTTP {response.status_code} ({kind})"
    location = response.headers.get("location")
    if response.is_redirect and location:
        parts = urlsplit(location)
        text += f" redirecting to {parts.hostname or 'a relative path'}{parts.path[:64] if parts.hostname else ''}"
    return text


def quote_segment(segment: str) -> str:
    """A name as one URL path segment (its slashes escaped too)."""
    return quote(segment, safe="")
