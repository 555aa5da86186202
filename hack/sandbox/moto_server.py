"""Run moto (AWS) in server mode for tests and the demo: real HTTP, real boto3 clients.

Stdlib only: the server runs as a subprocess of ``sys.executable`` (which must have
``moto[server]``), through ``moto_throttle.py`` so tests can also inject ECS
throttling and count the AWS calls a cycle makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from .processes import free_port, stop_process_group

LAUNCHER = pathlib.Path(__file__).resolve().with_name("moto_throttle.py")

Log = Callable[[str], object]


class MotoServer:
    """A moto server subprocess on a free loopback port, in its own process group.

    ``env`` is added to the server's environment (e.g. ``INITIAL_NO_AUTH_ACTION_COUNT``
    to make moto check credentials and IAM policies). ``host`` is the address it listens
    on: loopback, or the node bridge's address for pods (tests/node).
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        log: Log = print,
        *,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = pathlib.Path(workdir).resolve()
        self.host = host
        self.log = log
        self.extra_env = dict(env or {})
        self.python = python
        self.port: int | None = None
        self.log_path = self.workdir / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("moto server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A free port can be taken before moto binds it: try another one.
        for _ in range(3):
            self.port = free_port(self.host)
            if self._spawn(timeout):
                return
        raise RuntimeError(f"moto server did not start; last log lines:\n{self._log_tail()}")

    def _spawn(self, timeout: float) -> bool:
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== start on port {self.port} at {time.ctime()} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                [self.python, str(LAUNCHER), "-H", self.host, "-p", str(self.port)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches everything it started
            )
        while time.monotonic() < started + timeout:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            with contextlib.suppress(OSError, ValueError):
                self._control("GET", "calls")
                self.log(f"moto server ready at {self.endpoint_url} after {time.monotonic() - started:.1f}s")
                return True
            time.sleep(0.1)
        self.stop()
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, grace=10.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    # -- test controls --------------------------------------------------------------

    def throttle(self, action: str, count: int, match: str | None = None) -> None:
        """Answer the next ``count`` requests for ``action`` (``DescribeTasks`` or a full
        ``X-Amz-Target``) with ThrottlingException; with ``match``, only requests whose
        body contains it (e.g. a cluster name). JSON-protocol services only."""
        self._control("POST", "throttle", {"action": action, "count": count, "match": match or ""})

    def calls(self) -> dict[str, int]:
        """Requests received per operation since start (or ``reset_calls``), throttled ones too.

        Keys are ``X-Amz-Target`` values, e.g. ``AmazonEC2ContainerServiceV20141113.DescribeTasks``.
        """
        return {str(k): int(v) for k, v in self._control("GET", "calls").items()}

    def count(self, operation: str) -> int:
        """Requests for one operation name (``DescribeTasks``), whatever the service prefix."""
        return sum(n for key, n in self.calls().items() if key == operation or key.endswith("." + operation))

    def reset_calls(self) -> None:
        """Clear the call counts and disarm pending throttles."""
        self._control("POST", "reset")

    def set_transition(self, model_name: str, transition: dict[str, Any]) -> None:
        """moto's state manager, e.g. ``("ecs::task", {"progression": "manual", "times": 1})``
        makes each DescribeTasks move a task one lifecycle step (RUNNING → DEACTIVATING → …).
        ``hold_tasks()`` restores the default of this server."""
        self._request("POST", f"{self.endpoint_url}/moto-api/state-manager/set-transition",
                      {"model_name": model_name, "transition": transition})

    def hold_tasks(self) -> None:
        """Tasks keep their status until StopTask (how the server starts)."""
        self.set_transition("ecs::task", {"progression": "manual", "times": sys.maxsize})

    def reset(self) -> None:
        """Forget every AWS resource (moto's own reset); counts and throttles too."""
        self._request("POST", f"{self.endpoint_url}/moto-api/reset")
        self.reset_calls()

    def _control(self, method: str, command: str, body: object | None = None) -> Any:
        return json.loads(self._request(method, f"{self.endpoint_url}/_pwo/{command}", body) or b"null")

    @staticmethod
    def _request(method: str, url: str, body: object | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return bytes(resp.read())


if __name__ == "__main__":
    # Manual use: `python hack/sandbox/moto_server.py [workdir]` serves until Ctrl-C.
    import tempfile

    wd = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())
    with MotoServer(wd) as srv:
        print(f"AWS_ENDPOINT_URL={srv.endpoint_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while srv.running:
                time.sleep(1)
