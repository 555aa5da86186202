"""The Lease election runs on its own thread, event loop and connection: it keeps renewing
while the operator's main event loop is blocked for longer than the renew deadline, and
while the API server answers each renewal later than the retry period."""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from datetime import datetime
from urllib.parse import urlsplit

import pytest
from kubernetes.aio.client import Configuration
from kubernetes.aio.config import load_kube_config

from prefect_workpool_operator.kube.lease import ElectionThread, LeaseElector
from sandbox.tcp_proxy import TcpProxy
from tests.support.kubectl import Kubectl

pytestmark = pytest.mark.e2e

TIMINGS = {"lease_seconds": 6.0, "renew_deadline": 4.0, "retry_seconds": 1.0}


def renew_time(kubectl: Kubectl, namespace: str) -> datetime:
    spec = kubectl.in_namespace(namespace).get_json("lease", "thread")["spec"]
    return datetime.fromisoformat(spec["renewTime"].replace("Z", "+00:00"))


async def elected(config_file: str, timings: dict[str, float], **elector: object) -> tuple[LeaseElector, ElectionThread]:
    """An ElectionThread started with ``config_file``'s credentials, once its elector leads."""
    configuration = Configuration()
    await load_kube_config(config_file=config_file, client_configuration=configuration)
    lease = LeaseElector(identity="a", **timings, **elector)  # type: ignore[arg-type]
    election = ElectionThread(lease)
    election.start(configuration)
    deadline = time.monotonic() + 30
    while not lease.is_leader:
        if time.monotonic() > deadline:
            await election.stop()
            raise AssertionError("never became leader")
        await asyncio.sleep(0.05)
    return lease, election


def test_renewals_go_on_while_the_main_loop_is_blocked(kubectl: Kubectl, namespace: str) -> None:
    lost: list[float] = []

    async def scenario() -> dict[str, object]:
        elector, election = await elected(kubectl.kubeconfig, TIMINGS, namespace=namespace, name="thread",
                                          on_lost=lambda: lost.append(1.0))
        try:
            before = renew_time(kubectl, namespace)
            transitions = elector.transitions
            time.sleep(TIMINGS["renew_deadline"] + 2.0)  # the main loop is blocked, as under a fleet's burst
            during = renew_time(kubectl, namespace)
            leading = elector.is_leader
            await asyncio.sleep(0.2)  # an on_lost queued for this loop would run now
            return {"before": before, "during": during, "leading": leading, "transitions": elector.transitions - transitions}
        finally:
            await election.stop()

    seen = asyncio.run(scenario())
    assert seen["leading"], "leadership lost while the main loop was blocked"
    assert lost == []
    assert seen["transitions"] == 0
    # Renewed every retry (1 s) during the 6 s block: the record moved by well over the deadline.
    assert (seen["during"] - seen["before"]).total_seconds() >= TIMINGS["renew_deadline"], seen
    assert kubectl.in_namespace(namespace).get_json("lease", "thread")["spec"].get("holderIdentity") in ("", None)


def test_lost_leadership_reaches_the_main_loop(kubectl: Kubectl, namespace: str) -> None:
    """Someone else takes the Lease: ``on_lost`` runs on the caller's loop, not the election's thread."""
    import threading

    async def scenario() -> tuple[bool, bool]:
        configuration = Configuration()
        await load_kube_config(config_file=kubectl.kubeconfig, client_configuration=configuration)
        main = threading.get_ident()
        called: asyncio.Event = asyncio.Event()
        on_main: list[bool] = []

        def on_lost() -> None:
            on_main.append(threading.get_ident() == main)
            called.set()

        elector = LeaseElector(namespace=namespace, name="stolen", identity="a", on_lost=on_lost, **TIMINGS)
        election = ElectionThread(elector)
        election.start(configuration)
        try:
            while not elector.is_leader:
                await asyncio.sleep(0.05)
            ns = kubectl.in_namespace(namespace)
            ns("patch", "lease", "stolen", "--type=merge", "-p", '{"spec":{"holderIdentity":"b"}}')
            await asyncio.wait_for(called.wait(), timeout=10)
            return on_main[0], elector.is_leader
        finally:
            await election.stop()

    on_main, still_leader = asyncio.run(scenario())
    assert on_main and not still_leader


def through(kubectl: Kubectl, proxy: TcpProxy, path: pathlib.Path) -> str:
    """The kubeconfig of ``kubectl`` with its server replaced by the proxy (same certificate: same IP)."""
    config = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    path.write_text(json.dumps(config))
    return str(path)


def test_renewals_slower_than_the_retry_period_keep_the_lease(kubectl: Kubectl, namespace: str,
                                                              tmp_path: pathlib.Path) -> None:
    """Each renewal answered 1.5 s after it was sent, against a 1 s retry period: a renewal
    may take until the renew deadline (6 s), so the leader keeps its Lease (one every 2.5 s).
    Cut at the retry period, every renewal was cancelled and sent again, and leadership was
    lost at the deadline."""
    timings = {"lease_seconds": 9.0, "renew_deadline": 6.0, "retry_seconds": 1.0}
    server = json.loads(kubectl("config", "view", "--minify", "-o", "json"))["clusters"][0]["cluster"]["server"]
    address = urlsplit(server)
    lost: list[float] = []

    async def scenario(config_file: str, link: TcpProxy) -> dict[str, object]:
        elector, election = await elected(config_file, timings, namespace=namespace, name="slow",
                                          on_lost=lambda: lost.append(1.0))
        try:
            spec = kubectl.in_namespace(namespace).get_json("lease", "slow")["spec"]
            link.delay = 1.5
            renewals = set()
            slow_until = time.monotonic() + 3 * timings["renew_deadline"]
            while time.monotonic() < slow_until:
                renewals.add(kubectl.in_namespace(namespace).get_json("lease", "slow")["spec"]["renewTime"])
                await asyncio.sleep(0.3)
            leading = elector.is_leader
            link.delay = 0.0
            return {"leading": leading, "renewals": len(renewals - {spec["renewTime"]}),
                    "transitions": elector.transitions}
        finally:
            await election.stop()

    # A request is held once (after 0.5 s of quiet on its connection), not per TLS record.
    with TcpProxy(address.hostname or "127.0.0.1", address.port or 443, idle=0.5) as link:
        seen = asyncio.run(scenario(through(kubectl, link, tmp_path / "slow.kubeconfig"), link))
    assert lost == [] and seen["leading"], f"leadership lost behind a slow API server: {seen}"
    assert seen["transitions"] == 1, seen
    assert seen["renewals"] >= 3, seen  # 18 s of late answers: renewed all along, not once at the end
