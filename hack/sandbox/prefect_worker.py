"""Run the real prefect-aws ECS worker for tests: ``prefect worker start --type ecs``
against a sandbox Prefect server, with moto (``moto_server.py``) as AWS.

Stdlib only, like ``prefect_server.py``: the worker lives in its own pinned virtualenv
(``hack/prefect-worker-requirements.txt`` → ``.venv-worker``, created on first use and
cached), driven as a subprocess in its own process group so a test can SIGKILL it the
way an OOM kill or a node loss would.

moto has no EventBridge→SQS queue, so the worker's ECS observer only warns and never
moves a run on: exactly the set-up in which a task that fails to start leaves its run
PENDING (FACTS.md). prefect-aws 0.7.12 has no setting that turns the observer off.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .processes import kill_process_group, stop_process_group
from .prefect_server import REPO_ROOT, ensure_venv

REQUIREMENTS = REPO_ROOT / "hack" / "prefect-worker-requirements.txt"
REGION = "us-east-1"

Log = Callable[[str], object]


def ensure_worker_venv(venv_dir: pathlib.Path | None = None, log: Log = print) -> pathlib.Path:
    """Create (or reuse) the worker venv; return the path of its ``prefect`` executable."""
    if venv_dir is None:
        venv_dir = pathlib.Path(os.environ.get("PWO_WORKER_VENV") or REPO_ROOT / ".venv-worker")
    return ensure_venv(venv_dir, REQUIREMENTS, "prefect-aws worker", log=log) / "bin" / "prefect"


def worker_env(api_url: str, aws_endpoint: str, home: pathlib.Path, **settings: str) -> dict[str, str]:
    """The environment of a worker: this Prefect server, moto as every AWS service.

    Only the caller's PATH and the like are kept: no PREFECT_* or AWS_* from outside.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        # Quick pickup and a short heartbeat: OFFLINE 3 heartbeats after a kill.
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        AWS_ENDPOINT_URL=aws_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


class PrefectWorker:
    """One ``prefect worker start --type ecs`` process."""

    def __init__(self, prefect: pathlib.Path, env: dict[str, str], pool: str, name: str, log_path: pathlib.Path) -> None:
        self.prefect = prefect
        self.env = env
        self.pool = pool
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pathlib.Path(self.env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== worker {self.name} start at {time.ctime()} ===\n".encode())
            out.flush()
            self._proc = subprocess.Popen(
                [str(self.prefect), "worker", "start", "--type", "ecs", "--pool", self.pool, "--name", self.name],
                env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, like an OOM kill: no stopped event, no clean-up."""
        if self._proc is not None:
            kill_process_group(self._proc)
            self._proc = None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, grace=10.0)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def create_ecs_pool(prefect: pathlib.Path, env: dict[str, str], pool: str) -> None:
    """``prefect work-pool create --type ecs``: the pool with prefect-aws's own base job template."""
    subprocess.run([str(prefect), "work-pool", "create", pool, "--type", "ecs"], env=env, check=True,
                   capture_output=True, timeout=120)


def default_ecs_template(prefect: pathlib.Path, env: dict[str, str]) -> dict[str, Any]:
    """prefect-aws's default ECS base job template, as ``work-pool get-default-base-job-template`` prints it."""
    out = subprocess.run([str(prefect), "work-pool", "get-default-base-job-template", "--type", "ecs"], env=env,
                         check=True, capture_output=True, timeout=120).stdout
    return dict(json.loads(out))


if __name__ == "__main__":
    # Manual use: `python hack/sandbox/prefect_worker.py API_URL AWS_ENDPOINT POOL NAME`.
    api, endpoint, pool_name, worker_name = sys.argv[1:5]
    home = pathlib.Path(f"/tmp/prefect-worker-{worker_name}")
    worker = PrefectWorker(ensure_worker_venv(), worker_env(api, endpoint, home), pool_name, worker_name,
                           home.with_suffix(".log"))
    worker.start()
    print(f"worker {worker_name} started; log in {worker.log_path}", flush=True)
    try:
        while worker.running:
            time.sleep(1)
    except KeyboardInterrupt:
        worker.stop()
