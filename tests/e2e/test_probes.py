"""The Pod's probes on a real API server: /readyz tells the truth (login, Lease), /healthz is
answered by the operator's event loop (a stopped process does not answer)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from sandbox.processes import free_port, operator_process
from tests.support.kubectl import Kubectl, wait_for

pytestmark = pytest.mark.e2e


def get(url: str, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); 503/500 are answers too. Connection errors and timeouts propagate."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def answers(url: str) -> tuple[int, dict[str, Any]] | None:
    try:
        return get(url)
    except OSError:  # not listening yet
        return None


def operator_env(kubeconfig: str, namespace: str, pod: str, port: int) -> dict[str, str]:
    return {
        **os.environ, "KUBECONFIG": kubeconfig, "PWO_NAMESPACES": namespace, "PWO_LEASE_NAMESPACE": namespace,
        "POD_NAME": pod, "PWO_METRICS_PORT": "0", "PWO_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
        "PWO_LEASE_NAME": f"probes-{pod}", "PWO_VERBOSE": "1",
    }


def test_bad_token_is_not_ready_but_alive(kubectl: Kubectl, namespace: str, tmp_path: pathlib.Path) -> None:
    config = yaml.safe_load(pathlib.Path(kubectl.kubeconfig).read_text())
    config["users"][0]["user"]["token"] = "not-a-valid-token"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(config))
    port = free_port()
    with operator_process(operator_env(str(bad), namespace, "bad-token", port), tmp_path / "op.log") as proc:
        base = f"http://127.0.0.1:{port}"
        try:
            status, body = wait_for(lambda: answers(f"{base}/healthz"), timeout=60, what="/healthz answers")
        except AssertionError:
            raise AssertionError((tmp_path / "op.log").read_text()[-5000:]) from None
        assert status == 200 and body["leader"]["pod"] == "bad-token", body
        status, body = wait_for(lambda: (r := answers(f"{base}/readyz")) and "login" in r[1].get("reason", "") and r,
                                timeout=30, what="/readyz says login")
        assert status == 503 and body["ready"] is False, body
        assert "401" in body["reason"], body
        # Still not ready a while later, and still alive (the kubelet must not restart a Pod for bad RBAC/token).
        status, body = get(f"{base}/readyz")
        assert status == 503, body
        assert get(f"{base}/healthz")[0] == 200
        assert proc.poll() is None, (tmp_path / "op.log").read_text()[-3000:]
    print("REASON", body["reason"])


def test_healthy_operator_becomes_ready_and_a_stopped_one_does_not_answer(
        kubectl: Kubectl, namespace: str, tmp_path: pathlib.Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with operator_process(operator_env(kubectl.kubeconfig, namespace, "healthy", port), tmp_path / "op.log") as proc:
        status, body = wait_for(lambda: (r := answers(f"{base}/readyz")) and r[0] == 200 and r, timeout=60,
                                what="/readyz 200")
        assert body == {"ready": True, "reason": "Lease reached", "shard": "default", "pod": "healthy",
                        "role": body["role"]}, body
        wait_for(lambda: get(f"{base}/healthz")[1]["leader"]["role"] == "leader", what="role leader")
        assert kubectl.in_namespace(namespace).get_json("lease", "probes-healthy")["spec"]["holderIdentity"] == "healthy"
        # A process that cannot run its event loop does not answer liveness.
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(OSError):  # a timeout: the kernel accepts, nobody answers
                get(f"{base}/healthz", timeout=2.0)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: (r := answers(f"{base}/healthz")) and r[0] == 200, timeout=20, what="/healthz again")
