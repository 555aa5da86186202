"""Starting and stopping the sandbox's processes, one way for all of them."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; then make sure
    nothing of the group is left holding a port or a file (a leader can exit first)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


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
