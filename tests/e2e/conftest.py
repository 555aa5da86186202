"""End-to-end fixtures: a real kube-apiserver, the CRD, the operator as a process.

By default a local control plane (etcd + kube-apiserver built from Go modules) is
started for the session. With ``E2E_USE_KUBECONFIG=1`` the tests use the cluster
``KUBECONFIG`` names instead (kind on a laptop, say); the Prefect server still runs
on this machine's loopback, so that cluster must be local too.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sandbox.kube import LocalControlPlane
from sandbox.processes import free_port
from sandbox.processes import operator_process as run_operator
from tests.support.kubectl import Kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "prefectworkpoolpolicies.prefectops.dev.yaml"


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    if os.environ.get("E2E_USE_KUBECONFIG") == "1":
        yield pathlib.Path(os.environ["KUBECONFIG"])
        return
    with LocalControlPlane(tmp_path_factory.mktemp("kube")) as plane:
        yield plane.kubeconfig


@pytest.fixture(scope="session")
def kubectl(kubeconfig: pathlib.Path) -> Kubectl:
    k = Kubectl(kubeconfig)
    k("apply", "--server-side", "-f", str(CRD))
    k("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD.name.removesuffix('.yaml')}")
    return k


@contextlib.contextmanager
def scratch_namespace(kubectl: Kubectl, prefix: str) -> Iterator[str]:
    """A new namespace, emptied and deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    # Without a controller-manager a namespace's contents are never deleted with it:
    # delete the policies themselves (so the operator stops reconciling them), and
    # strip finalizers in case the operator is already gone.
    ns = kubectl.in_namespace(name)
    ns.run("delete", "pwpp", "--all", "--wait=false", check=False)
    for policy in ns("get", "pwpp", "-o", "name").split():
        ns.run("patch", policy, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    with scratch_namespace(kubectl, "e2e") as name:
        yield name


@dataclass(frozen=True)
class OperatorProcess:
    log: pathlib.Path
    metrics_url: str


@pytest.fixture(scope="module")  # stops after its module: nothing keeps reconciling behind later tests
def operator_process(kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The operator as users run it (``python -m prefect_workpool_operator``)."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    port = free_port()
    env = {
        **os.environ, "KUBECONFIG": kubectl.kubeconfig, "PWO_TICK_SECONDS": "1", "PWO_VERBOSE": "1",
        "PWO_METRICS_PORT": str(port),
        # AWS calls go to moto on loopback; the default credential chain picks these up.
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    }
    with run_operator(env, log):
        yield OperatorProcess(log, f"http://127.0.0.1:{port}/metrics")
