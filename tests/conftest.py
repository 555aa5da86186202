"""Fixtures that start real components: a Prefect server and a Kubernetes control plane.

Servers are session-scoped (starting them is the slow part) and every test works in
its own work pool / namespace, so tests don't see each other's objects.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Iterator

import pytest

from sandbox.moto_server import MotoServer
from sandbox.prefect_seed import PrefectSeeder
from sandbox.prefect_server import PrefectServer
from tests.support.names import BASIC_AUTH, unique  # noqa: F401  (fixtures and tests use them)



@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    # A fast foreman: workers that stop heartbeating turn OFFLINE within seconds.
    env = {"PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "2"}
    with PrefectServer(tmp_path_factory.mktemp("prefect"), env=env) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with PrefectServer(tmp_path_factory.mktemp("prefect-auth"), auth_string=BASIC_AUTH) as server:
        yield server


@pytest.fixture
def seeder(prefect_server: PrefectServer) -> Iterator[PrefectSeeder]:
    with PrefectSeeder(prefect_server.api_url) as s:
        yield s


@pytest.fixture
def pool_name() -> str:
    return f"ecs-{uuid.uuid4().hex[:8]}"


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("PWO_REPO_ROOT", str(REPO_ROOT))


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def sandbox(moto: MotoServer):
    from tests.support.ecs_sandbox import EcsSandbox

    return EcsSandbox(moto)


# -- every AWS operation the operator makes, against the IAM policies in deploy/iam/ ------------

from tests.support.aws_operations import LOG as AWS_OPERATIONS, all_granted  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    AWS_OPERATIONS.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Any run, whole or partial: an operation the operator made that no policy grants fails it.
    (That a policy grants nothing unused is tested per mode: tests/integration/cycle/test_iam_policies.py.)"""
    used = AWS_OPERATIONS.actions()
    if session.config.cache is not None:
        session.config.cache.set("pwo/aws-operations", sorted(used))
    missing = used - all_granted()
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"AWS operations the operator made that no policy in deploy/iam/ grants: "
                                f"{sorted(missing)} (docs/iam.md)", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
