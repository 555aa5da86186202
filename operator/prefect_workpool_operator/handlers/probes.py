"""The Pod's probes, served by a small aiohttp server of ours on PWO_LIVENESS_ENDPOINT's port.

- ``/healthz`` (liveness; the endpoint's path): answered by the operator's main event loop
  itself, so a wedged loop (blocked, or the process stopped) does not answer and the
  kubelet restarts the Pod. 200 with ``{"leader": {shard, pod, role}}`` (kopf's former
  format); 500 if the Lease election thread died.
- ``/readyz`` (readiness): 200 only once logged in and, with leader election on, the
  shard's Lease was reached within the lease duration (``core.readiness``); else 503 with
  ``{"ready": false, "reason": ...}``.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

from aiohttp import web

from prefect_workpool_operator.core.readiness import Verdict

log = logging.getLogger(__name__)

READY_PATH = "/readyz"


class ProbeServer:
    def __init__(self, endpoint: str, *, health: Callable[[], tuple[bool, dict[str, Any]]],
                 readiness: Callable[[], tuple[Verdict, dict[str, Any]]]) -> None:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme != "http":
            raise ValueError(f"PWO_LIVENESS_ENDPOINT must be an http:// URL, not {endpoint!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.health_path = parts.path or "/healthz"
        self._health, self._readiness = health, readiness
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get(self.health_path, self._get_health), web.get(READY_PATH, self._get_ready)])
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        log.debug("probes at http://%s:%s%s and %s", self.host, self.port, self.health_path, READY_PATH)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _get_health(self, _: web.Request) -> web.Response:
        ok, body = self._health()
        return web.json_response(body, status=200 if ok else 500)

    async def _get_ready(self, _: web.Request) -> web.Response:
        verdict, extra = self._readiness()
        return web.json_response({"ready": verdict.ready, "reason": verdict.reason, **extra},
                                 status=200 if verdict.ready else 503)
