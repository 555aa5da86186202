"""Process helpers for the sandbox, tests and benchmarks, one way for all of them:
free loopback ports, and starting, checking and stopping process groups."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

Log = Callable[[str], object]


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``address`` right now (racy, but fine on a test box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int, name: str) -> bool:
    """True if `pid` runs and is still `name` (guards against a recycled pid).

    A zombie has an empty cmdline, so it counts as gone.
    """
    try:
        cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    return pathlib.Path(argv0).name.startswith(name)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def kill_process_group(proc: subprocess.Popen[bytes], wait: float = 10.0) -> None:
    """SIGKILL, like an OOM kill: no clean-up; then reap the leader."""
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout=wait)


def stop_pids(pids: Mapping[str, int], log: Log = print, grace: float = 5.0) -> None:
    """In order: SIGTERM the process group, SIGKILL it if still there after `grace` seconds.

    For processes this Python did not start (a pid file): each was started as a session
    leader, so its pid is also its process group id.
    """
    for name, pid in pids.items():
        if not pid_alive(pid, name):
            continue
        log(f"stopping {name} (pid {pid})")
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid, name) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid, name):
            log(f"{name} (pid {pid}) still running after {grace}s; killing it")
            signal_group(pid, signal.SIGKILL)


def wait_until(what: str, proc: subprocess.Popen[bytes], deadline: float, ready: Callable[[], bool]) -> None:
    """Poll ``ready`` until it holds; fail at once if ``proc`` exits, or at the monotonic ``deadline``."""
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in time")
        time.sleep(0.2)


def log_tails(workdir: pathlib.Path, names: Iterable[str], log: Log, lines: int = 30) -> None:
    """The last lines of each ``<workdir>/<name>.log``: why a component did not start."""
    for name in names:
        path = workdir / f"{name}.log"
        tail = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        log(f"---- last {len(tail)} lines of {path}")
        for line in tail:
            log(line)


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; then make sure
    nothing of the group is left holding a port or a file (a leader can exit first)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        signal_group(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    signal_group(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def operator_process(env: Mapping[str, str], log: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m prefect_workpool_operator`` as users run it, logging to ``log``."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect_workpool_operator"], env=dict(env), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process_group(proc, grace=15.0)
