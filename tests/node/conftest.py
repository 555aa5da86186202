"""Fixtures of the node tests: a control plane serving on the node bridge, a real node
(containerd + kubelet, with kube-controller-manager, kube-scheduler and kube-proxy), the
operator image built from the Dockerfile and imported into the node, a Prefect server the
pods can reach, and helm.

They need root (hack/sandbox/node.py). Where there is none they are skipped with the reason,
printed; under CI=true a skip is a failure instead.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sandbox.kube import LocalControlPlane, build_tools
from sandbox.moto_server import MotoServer
from sandbox.node import NODE_IP, LocalNode, install_node_packages, leftovers, node_sandbox, node_unavailable
from sandbox.prefect_server import PrefectServer
from tests.support.names import BASIC_AUTH
from tests.support.kubectl import Kubectl

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGE_REPO = "prefect-workpool-operator"
IMAGE_TAG = "node-test"
FIGURES: dict[str, float] = {}


def record(name: str, seconds: float) -> None:
    """A figure for the summary printed at the end of the run (and the session's note)."""
    FIGURES[name] = round(seconds, 1)
    print(f"FIGURE {name}: {seconds:.1f} s")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The node's figures at the end of every run, captured output or not."""
    if FIGURES:
        terminalreporter.section("node figures (seconds)")
        for name, seconds in FIGURES.items():
            terminalreporter.write_line(f"{name}: {seconds}")


@dataclass
class Node:
    plane: LocalControlPlane
    node: LocalNode
    kubectl: Kubectl


def _required() -> None:
    why = node_unavailable()
    if why is None:
        return
    message = f"NODE TESTS NOT RUN: {why}"
    print(f"\n!! {message}\n", file=sys.stderr)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: the node tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    _required()
    install_node_packages()
    build_tools()  # timed apart from the node's own start-up
    workdir = tmp_path_factory.mktemp("node")
    started = time.monotonic()
    with node_sandbox(workdir, log=lambda line: print(line, file=sys.stderr)) as (plane, local):
        record("node start-up (control plane + node Ready)", time.monotonic() - started)
        yield Node(plane, local, Kubectl(plane.kubeconfig))
    left = leftovers()
    assert left == [], f"the node left these behind: {left}"
    print("\nnode figures: " + ", ".join(f"{k} = {v} s" for k, v in FIGURES.items()), file=sys.stderr)


@pytest.fixture(scope="session")
def operator_image(node: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from the Dockerfile (make image's path), imported into the node."""
    tar = tmp_path_factory.mktemp("image") / "operator.tar"
    started = time.monotonic()
    env = {**os.environ, "IMAGE_REPO": IMAGE_REPO, "IMAGE_TAG": IMAGE_TAG}
    subprocess.run([str(REPO / "hack" / "image.sh"), "save", str(tar)], env=env, check=True,
                   stdout=sys.stderr)
    record("image build (hack/image.sh)", time.monotonic() - started)
    node.node.import_image(tar)
    tar.unlink()
    return f"{IMAGE_REPO}:{IMAGE_TAG}"


@pytest.fixture(scope="session")
def node_prefect(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server on the bridge's address: the operator pod's cycles read it."""
    with PrefectServer(tmp_path_factory.mktemp("prefect-node"), host=NODE_IP) as server:
        yield server


@pytest.fixture(scope="module")
def node_prefect_auth(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server behind basic auth on the bridge's address: the pod reads its Secret."""
    with PrefectServer(tmp_path_factory.mktemp("prefect-node-auth"), host=NODE_IP, auth_string=BASIC_AUTH) as server:
        yield server


@pytest.fixture(scope="module")
def node_moto(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """AWS (moto) on the bridge's address: the pod's ECS calls."""
    with MotoServer(tmp_path_factory.mktemp("moto-node"), host=NODE_IP) as server:
        yield server


@pytest.fixture(scope="session")
def helm_binary() -> pathlib.Path:
    return build_tools() / "helm"
