"""Run a real Prefect 3 server for tests and the demo.

Stdlib only on purpose: the server lives in its own virtualenv (see
``hack/prefect-server-requirements.txt``) so Prefect's large dependency tree never
mixes with the operator's; this module only drives it as a subprocess.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self

from .processes import free_port, stop_process_group

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "hack" / "prefect-server-requirements.txt"
LOCK_NAME = ".pwo-build.lock"
STAMP_NAME = ".requirements.sha256"

Log = Callable[[str], object]

# Defaults for tests, checked against the prefect 3.8.8 source and a live server:
# - LATE_RUNS on: tests rely on SCHEDULED runs turning "Late" (15 s after their time).
# - FOREMAN on: a worker's status is a DB column that each heartbeat sets ONLINE and
#   only the foreman sets OFFLINE (loop 15 s; after 3 x heartbeat_interval_seconds,
#   fallback 30 s). workers/filter returns that column and filters on it, and the
#   foreman also sets pools NOT_READY. Without it a dead worker stays ONLINE forever
#   (seen live). (WorkerResponse.model_validate recomputes status from the heartbeat
#   time, but FastAPI doesn't call it when serializing.)
# - EVENT_PERSISTER on: `POST /events/filter` (who claimed a run) reads what it stores.
# - The rest serve features tests don't use (schedules, automations, task runs,
#   pauses, concurrency leases, child-run cancellation, worker-channel cleanup); off
#   so they add no background writes. Measured: the SQLite 503s come mostly from
#   LATE_RUNS and the event persister (200 creates: ~5 % 503 with these defaults,
#   0 with those two and FOREMAN off too), so clients must still retry.
DEFAULT_SERVICES: dict[str, bool] = {
    "LATE_RUNS": True,
    "FOREMAN": True,
    "EVENT_PERSISTER": True,
    "SCHEDULER": False,
    "TRIGGERS": False,
    "TASK_RUN_RECORDER": False,
    "PAUSE_EXPIRATIONS": False,
    "REPOSSESSOR": False,
    "CANCELLATION_CLEANUP": False,
    "CLEANUP_RECONCILER": False,
    "EVENT_LOGGER": False,
}


def _requirements_digest(requirements: pathlib.Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def _base_python() -> str:
    # A venv made from another venv's python still works, but prefer a plain
    # interpreter so the server venv doesn't depend on a test venv staying around.
    return (
        os.environ.get("PWO_PREFECT_PYTHON")
        or getattr(sys, "_base_executable", None)
        or shutil.which("python3")
        or sys.executable
    )


def ensure_prefect_venv(venv_dir: pathlib.Path | None = None, log: Log = print) -> pathlib.Path:
    """Create (or reuse) the server venv; return the path of its ``prefect`` executable."""
    if venv_dir is None:
        venv_dir = pathlib.Path(os.environ.get("PWO_PREFECT_VENV") or REPO_ROOT / ".venv-prefect")
    return ensure_venv(venv_dir, REQUIREMENTS, "Prefect server", log=log) / "bin" / "prefect"


def ensure_venv(venv_dir: pathlib.Path, requirements: pathlib.Path, what: str, log: Log = print) -> pathlib.Path:
    """Create (or reuse) a venv pinned by ``requirements``; rebuilt when the file changes."""
    venv_dir = venv_dir.resolve()
    prefect = venv_dir / "bin" / "prefect"
    stamp = venv_dir / STAMP_NAME
    digest = _requirements_digest(requirements)

    def up_to_date() -> bool:
        return prefect.exists() and stamp.exists() and stamp.read_text().strip() == digest

    if up_to_date():
        return venv_dir

    # Parallel test processes may all get here; one builds, the others wait. The lock
    # lives inside the venv dir (``venv`` accepts an existing dir), not beside it in the checkout.
    venv_dir.mkdir(parents=True, exist_ok=True)
    lock_path = venv_dir / LOCK_NAME
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if up_to_date():
            return venv_dir
        started = time.monotonic()
        # Never delete: the dir may be a venv someone made by hand (PWO_PREFECT_VENV);
        # installing the full pin list on top brings it to the pinned set anyway.
        if not (venv_dir / "bin" / "python").exists():
            log(f"creating {what} venv at {venv_dir} (takes a minute or two)")
            subprocess.run([_base_python(), "-m", "venv", str(venv_dir)], check=True)
        else:
            log(f"syncing {what} venv at {venv_dir} with {requirements.name}")
        pip_log = venv_dir / "pip-install.log"
        with open(pip_log, "w") as out:
            proc = subprocess.run(
                [
                    str(venv_dir / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-r",
                    str(requirements),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,  # reported below with the log's tail
            )
        if proc.returncode != 0 or not prefect.exists():
            tail = pip_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pip install into {venv_dir} failed (see {pip_log}):\n{tail}")
        # Written last so an interrupted install is retried next time.
        stamp.write_text(digest + "\n")
        log(f"{what} venv ready in {time.monotonic() - started:.0f}s")
    return venv_dir


class PrefectServer:
    """A `prefect server start` subprocess on a free loopback port (or on ``host``: the node
    bridge's own address, for an operator running as a pod).

    ``start()`` may be called again after ``stop()``: it reuses the same port and
    PREFECT_HOME (so the same SQLite database), which lets tests restart the server
    under a running operator.
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        *,
        auth_string: str | None = None,
        services: dict[str, bool] | None = None,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        venv_dir: pathlib.Path | None = None,
        log: Log = print,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = pathlib.Path(workdir).resolve()
        self.host = host
        self.auth_string = auth_string
        self.services = {**DEFAULT_SERVICES, **{k.upper(): v for k, v in (services or {}).items()}}
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.venv_dir = venv_dir
        self.log = log
        self.port: int | None = None
        self.log_path = self.workdir / "prefect-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self.port}/api"

    @property
    def auth(self) -> tuple[str, str] | None:
        if not self.auth_string:
            return None
        user, _, password = self.auth_string.partition(":")
        return user, password

    def _env(self) -> dict[str, str]:
        # Drop the caller's PREFECT_* (profiles, PREFECT_API_URL, a developer's Cloud
        # key) so the server's behaviour depends only on what is set here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.workdir),
            # No internet here; don't let the server try to phone home.
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            PYTHONUNBUFFERED="1",
        )
        for name, enabled in self.services.items():
            env[f"PREFECT_SERVER_SERVICES_{name}_ENABLED"] = "true" if enabled else "false"
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def _healthy(self) -> bool:
        try:
            # /health stays open even with basic auth on.
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return resp.status == 200 and json.loads(resp.read()) is True
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 120) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        prefect = ensure_prefect_venv(self.venv_dir, log=self.log)
        self.workdir.mkdir(parents=True, exist_ok=True)
        first = self.port is None
        # A port picked by free_port can be taken before the server binds it; on a
        # first start just try another one.
        for attempt in range(3):
            if self.port is None:
                self.port = free_port(self.host)
            if self._spawn(prefect, timeout):
                return
            if not first or attempt == 2:
                break
            self.port = None
        raise RuntimeError(f"Prefect server did not become healthy; last log lines:\n{self._log_tail()}")

    def _spawn(self, prefect: pathlib.Path, timeout: float) -> bool:
        started = time.monotonic()
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== start on port {self.port} at {time.ctime()} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                [
                    str(prefect),
                    "server",
                    "start",
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--no-ui",
                ],
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own process group: stop() must also reach uvicorn/worker children.
                start_new_session=True,
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self._healthy():
                self.log(f"Prefect server healthy at {self.api_url} after {time.monotonic() - started:.1f}s")
                return True
            time.sleep(0.25)
        self.stop()
        return False

    def _log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, grace=15.0)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def prefect_server(workdir: pathlib.Path, **kwargs: object) -> Iterator[PrefectServer]:
    """Shorthand for ``with PrefectServer(workdir, ...) as server``."""
    server = PrefectServer(workdir, **kwargs)  # type: ignore[arg-type]
    with server:
        yield server


if __name__ == "__main__":
    # Manual use: `python3 hack/sandbox/prefect_server.py [workdir]` runs a server
    # until Ctrl-C (handy for poking at the API by hand).
    import tempfile

    wd = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(tempfile.mkdtemp())
    with PrefectServer(wd) as srv:
        print(f"PREFECT_API_URL={srv.api_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while srv.running:
                time.sleep(1)
