"""Run the local control plane (etcd + kube-apiserver) in the background for manual work.

    eval "$(python hack/cluster.py up)"     # starts it, exports KUBECONFIG
    python hack/cluster.py status
    python hack/cluster.py down             # stops it; the data dir is kept for the next `up`

Progress goes to stderr; stdout carries only the `export` line, so `eval` is safe.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from sandbox.kube import PID_FILE, LocalControlPlane, read_pid_file, write_pid_file  # noqa: E402  (path above)
from sandbox.processes import pid_alive, stop_pids  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _running(state: dict[str, object] | None) -> dict[str, int]:
    """The recorded components that are still alive."""
    pids = state.get("pids", {}) if state else {}
    assert isinstance(pids, dict)
    return {name: pid for name, pid in pids.items() if pid_alive(pid, name)}


def up(workdir: pathlib.Path, bin_dir: pathlib.Path | None, timeout: float) -> int:
    pid_file = workdir / PID_FILE
    state = read_pid_file(pid_file)
    if state and _running(state):
        _log(f"already running at {state['server']}")
    else:
        cp = LocalControlPlane(workdir, bin_dir, _log, detach=True)
        cp.start(timeout)  # on failure it prints the log tails and stops what it started
        write_pid_file(pid_file, {"pids": cp.pids, "server": cp.server,
                                  "kubeconfig": str(cp.kubeconfig)})
    print(f"export KUBECONFIG={workdir / 'kubeconfig'}")
    return 0


def down(workdir: pathlib.Path) -> int:
    pid_file = workdir / PID_FILE
    state = read_pid_file(pid_file)
    if state is None:
        _log(f"not running (no {pid_file})")
        return 0
    pids = state["pids"]
    assert isinstance(pids, dict)
    # The apiserver first, so it does not log etcd connection errors while going down.
    stop_pids(dict(reversed(list(pids.items()))), _log)
    pid_file.unlink()
    return 0


def status(workdir: pathlib.Path) -> int:
    state = read_pid_file(workdir / PID_FILE)
    running = _running(state)
    if not state or not running:
        print("stopped")
        return 1
    pids = state["pids"]
    assert isinstance(pids, dict)
    for name, pid in pids.items():
        print(f"{name}: pid {pid} {'running' if name in running else 'DEAD'}")
    print(f"server: {state['server']}\nexport KUBECONFIG={state['kubeconfig']}")
    return 0 if running.keys() == pids.keys() else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=pathlib.Path, default=REPO_ROOT / ".cluster",
                        help="state directory (default: .cluster/ in the repo root)")
    parser.add_argument("--bin-dir", type=pathlib.Path,
                        help="dir with etcd and kube-apiserver (default: run hack/build-tools.sh)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds `up` may take")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    if args.command == "up":
        return up(workdir, args.bin_dir, args.timeout)
    if args.command == "down":
        return down(workdir)
    return status(workdir)


if __name__ == "__main__":
    sys.exit(main())
