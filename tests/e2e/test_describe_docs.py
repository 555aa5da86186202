"""docs/conditions.md shows real `kubectl describe` output of a policy in each main state,
captured here from a real API server with the operator running; the test fails when the
doc drifts. `make describe-docs` (PWO_UPDATE_DOCS=1) rewrites the doc's blocks."""

from __future__ import annotations

import difflib
import os
import pathlib
import re

import pytest

from sandbox.prefect_seed import PrefectSeeder
from sandbox.processes import free_port
from tests.e2e.test_operator import policy, ready
from tests.support.kubectl import Kubectl, condition, wait_for

pytestmark = pytest.mark.e2e
DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "conditions.md"
STATES = ("ready", "suspended", "secret-not-found", "unreachable", "recovering")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def normalise(text: str, namespace: str) -> str:
    """Times, uids, versions, ports and the namespace vary by run; Event ages and order too."""
    text = text.replace(namespace, "team-a")
    text = TIME.sub("2026-11-30T10:00:00Z", text)
    text = UUID.sub("00000000-0000-0000-0000-000000000000", text)
    text = re.sub(r"http://127\.0\.0\.1:\d+", "http://prefect.example:4200", text)
    text = re.sub(r"(Resource Version:\s+)\d+", r"\g<1>1234", text)
    text = re.sub(r"(Pod:\s+)\S+", r"\g<1>prefect-workpool-operator-7d9f8-abcde", text)
    head, events = text.split("\nEvents:", 1) if "\nEvents:" in text else (text, "")
    rows = []
    for line in events.strip("\n").splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        if cols[0] in ("Type", "----", "<none>") or len(cols) < 5:
            continue
        rows.append((cols[0], cols[1], cols[3], cols[4]))  # type, reason, from, message (age dropped)
    table = "\n".join(f"  {t:<8} {r:<22} {src}  {msg}" for t, r, src, msg in sorted(rows)) or "  <none>"
    return head.rstrip() + "\nEvents:  (ages left out)\n" + table + "\n"


def block(text: str, state: str) -> str:
    return f"<!-- describe:{state} -->\n```text\n{text}```\n<!-- /describe:{state} -->"


def test_conditions_doc_shows_real_describe_output(kubectl: Kubectl, namespace: str, operator_process,
                                                   prefect_server) -> None:
    ns = kubectl.in_namespace(namespace)
    url = prefect_server.api_url
    with PrefectSeeder(url) as seeder:
        seeder.create_ecs_pool("docs-etl")
        seeder.heartbeat_worker("docs-etl", "ecs-worker-1")
        seeder.create_ecs_pool("docs-stuck")
        stuck = seeder.create_runs(seeder.create_deployment("docs-stuck", name="docs-stuck"), 3, {"type": "PENDING"})
        auth = {"basicAuthSecretRef": {"name": "prefect-auth", "key": "auth-string"}}
        ns.apply(policy("etl", url, "docs-etl"))
        ns.apply(policy("etl-paused", url, "docs-paused", suspend=True))
        ns.apply(policy("etl-guarded", url, "docs-guarded", prefect={"auth": auth}))
        ns.apply(policy("etl-offline", f"http://127.0.0.1:{free_port()}/api", "docs-offline"))
        ns.apply(policy("etl-recovering", url, "docs-stuck", staleRuns={"pendingTimeout": "30s"}))

        wait_for(ready(ns, "etl", "True", "Reconciled"), what="Ready")
        wait_for(ready(ns, "etl-paused", "True", "Suspended"), what="Suspended")
        wait_for(ready(ns, "etl-guarded", "False", "SecretNotFound"), what="SecretNotFound")
        wait_for(ready(ns, "etl-offline", "False", "Unreachable"), what="Unreachable")
        for name in ("etl-guarded", "etl-offline"):  # their Warning Event is part of the picture
            wait_for(lambda: name in ns("get", "events", "--field-selector", "type=Warning"), what=f"{name} Event")
        wait_for(lambda: (o := ns.get_json("pwpp", "etl-recovering")) and
                 (condition(o, "StaleRunsRecovered") or {}).get("reason") == "Recovered", timeout=120,
                 what="Recovered")
        assert {seeder.read_run(r)["state"]["name"] for r in stuck} == {"Requeued"}
        names = dict(zip(STATES, ("etl", "etl-paused", "etl-guarded", "etl-offline", "etl-recovering")))
        captured = {state: normalise(ns("describe", "pwpp", name), namespace) for state, name in names.items()}

    doc = DOC.read_text()
    wanted = doc
    for state, text in captured.items():
        pattern = re.compile(rf"<!-- describe:{state} -->.*?<!-- /describe:{state} -->", re.S)
        assert pattern.search(wanted), f"docs/conditions.md has no describe:{state} block"
        wanted = pattern.sub(lambda _m: block(text, state), wanted)
    if os.environ.get("PWO_UPDATE_DOCS") == "1":
        DOC.write_text(wanted)
        return
    diff = "".join(difflib.unified_diff(doc.splitlines(True), wanted.splitlines(True), "docs", "captured"))
    assert not diff, f"docs/conditions.md drifted from the real output (make describe-docs):\n{diff}"
