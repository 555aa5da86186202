"""run_cycle against a real Prefect server: the status and Events a cycle produces."""

from __future__ import annotations

import httpx
import pytest

from prefect_workpool_operator.cycle.reconcile import PolicyRuntime, run_cycle
from sandbox.processes import free_port
from sandbox.prefect_seed import PrefectSeeder, utcnow
from tests.support.recovery import NoSecrets

pytestmark = pytest.mark.integration


def body(api_url: str, pool: str, generation: int = 1, status: dict | None = None, **spec: object) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "generation": generation},
        "spec": {"prefect": {"apiUrl": api_url, "workPool": pool}, **spec},
        "status": status or {},
    }


def types(status: dict) -> dict:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


async def test_cycle_status_events_and_fail_static(seeder: PrefectSeeder, pool_name: str) -> None:
    seeder.create_ecs_pool(pool_name)
    deployment = seeder.create_deployment(pool_name)
    seeder.create_runs(deployment, 2, {"type": "PENDING"})
    runtime = PolicyRuntime()
    async with httpx.AsyncClient() as http:
        first = await run_cycle(body(seeder.api_url, pool_name), http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow())
        assert types(first.status) == {
            "Ready": ("True", "Reconciled"), "PrefectConnected": ("True", "Connected"),
            "WorkPoolReady": ("False", "PoolNotReady"),  # no worker has ever heartbeated
        }
        assert first.status["runs"]["pending"] == 2 and first.status["observedGeneration"] == 1
        assert {e.reason for e in first.events} == {"Reconciled", "Connected", "PoolNotReady"}

        # Same state again: no Events, transition times kept.
        second = await run_cycle(
            body(seeder.api_url, pool_name, status=first.status), http=http, secrets=NoSecrets(), runtime=runtime, now=utcnow()
        )
        assert second.events == []
        assert [c["lastTransitionTime"] for c in second.status["conditions"]] == [
            c["lastTransitionTime"] for c in first.status["conditions"]
        ]

        # Prefect unreachable: Ready=False with the reason, and no figures (the last ones stay).
        dead = f"http://127.0.0.1:{free_port()}/api"
        third = await run_cycle(
            body(dead, pool_name, generation=2, status=second.status), http=http, secrets=NoSecrets(),
            runtime=runtime, now=utcnow(),
        )
        assert types(third.status)["Ready"] == ("False", "Unreachable")
        assert "runs" not in third.status and "workers" not in third.status
        # One Warning for the outage (Ready and PrefectConnected fail alike); WorkPoolReady is not known now.
        assert [(e.type, e.reason) for e in third.events] == [("Warning", "Unreachable")]
        assert types(third.status)["WorkPoolReady"] == ("Unknown", "NotChecked")


async def test_invalid_spec_never_reaches_prefect(seeder: PrefectSeeder) -> None:
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    bad = body(seeder.api_url, "p", interval="often")
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        outcome = await run_cycle(bad, http=http, secrets=NoSecrets(), runtime=PolicyRuntime(), now=utcnow())
    assert types(outcome.status)["Ready"] == ("False", "InvalidSpec")
    assert "spec.interval" in outcome.status["conditions"][0]["message"]
    assert requests == []


async def test_suspended_policy_reads_nothing(seeder: PrefectSeeder) -> None:
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        outcome = await run_cycle(
            body(seeder.api_url, "p", suspend=True), http=http, secrets=NoSecrets(), runtime=PolicyRuntime(), now=utcnow()
        )
    assert types(outcome.status)["Ready"] == ("True", "Suspended")
    assert requests == []


async def test_a_persisting_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}/api"
    runtime = PolicyRuntime()
    status: dict = {}
    with caplog.at_level("WARNING", logger="prefect_workpool_operator.cycle.reconcile"):
        async with httpx.AsyncClient() as http:
            for _ in range(3):
                outcome = await run_cycle(body(dead, "p", status=status), http=http,
                                          secrets=NoSecrets(), runtime=runtime, now=utcnow())
                status = outcome.status
    lines = [r.getMessage() for r in caplog.records if r.name == "prefect_workpool_operator.cycle.reconcile"]
    assert len(lines) == 1 and "Unreachable" in lines[0], lines


class OneSecret:
    """A Secret reader holding one value (what the Secret cache returns once decoded)."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        return self.value


async def test_an_invalid_secret_value_sends_no_request(seeder: PrefectSeeder) -> None:
    requests: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        requests.append(request)

    auth = {"apiKeySecretRef": {"name": "cloud", "key": "api-key"}}
    spec = body(seeder.api_url, "p")
    spec["spec"]["prefect"]["auth"] = auth
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        outcome = await run_cycle(spec, http=http, secrets=OneSecret("pnu_abc\r\nX-Injected: 1"),
                                  runtime=PolicyRuntime(), now=utcnow())
    assert types(outcome.status)["Ready"] == ("False", "SecretInvalid")
    message = outcome.status["conditions"][0]["message"]
    assert "Secret ns/cloud key 'api-key'" in message and "carriage return" in message and "pnu_abc" not in message
    assert [(e.type, e.reason) for e in outcome.events] == [("Warning", "SecretInvalid")]
    assert requests == []
