"""The chart's Grafana dashboard: shipped in a ConfigMap the sidecar finds, every query
parses (promtool, as recording rules), and reads only metrics and labels the operator exports.
tests/e2e/test_helm.py compares the same names with a real operator's /metrics."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest

from prefect_workpool_operator.metrics import OperatorMetrics
from sandbox.kube import build_tools
from tests.support.chart_monitoring import (
    CHART, DASHBOARD, NAMESPACE, RELEASE, dashboard_expressions, exported_names, label_matchers, metric_names,
    promtool_check_rules,
)

# What the issue asks the dashboard to show, as the metrics that carry it.
REQUIRED = {
    "backlog": "pwo_pool_runs", "workers online": "pwo_pool_workers", "workers desired/running": "pwo_worker_service_tasks",
    "recoveries by reason": "pwo_runs_recovered_by_reason_total", "cycle duration": "pwo_reconcile_duration_seconds_bucket",
    "errors per policy": "pwo_reconcile_errors_total",
}


@pytest.fixture(scope="module")
def tools() -> pathlib.Path:
    return build_tools()


def rules_file(expressions: dict[str, str]) -> dict:
    """Each query as a recording rule: `promtool check rules` parses it as Prometheus would."""
    return {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(expressions.values())]}]}


def test_every_query_parses(tools: pathlib.Path, tmp_path: pathlib.Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    proc = promtool_check_rules(str(tools / "promtool"), rules_file(expressions), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in proc.stdout


def test_a_broken_query_is_caught(tools: pathlib.Path, tmp_path: pathlib.Path) -> None:
    proc = promtool_check_rules(str(tools / "promtool"), rules_file({"x": "sum by (namespace (pwo_pool_runs)"}), tmp_path)
    assert proc.returncode != 0


def test_queries_read_only_what_the_operator_exports() -> None:
    metrics = OperatorMetrics()
    exported = exported_names(generate_latest(metrics.registry).decode())
    labels = {name: set(collector._labelnames)  # noqa: SLF001
              for collector, names in metrics.registry._collector_to_names.items()  # noqa: SLF001
              for name in names}
    used: set[str] = set()
    for where, expr in dashboard_expressions().items():
        names = metric_names(expr)
        assert names and names <= set(exported), (where, names - set(exported))
        used |= names
        for metric, label, _ in label_matchers(expr):
            assert label in labels[metric] | ({"le"} if metric.endswith("_bucket") else set()), (where, metric, label)
    for what, metric in REQUIRED.items():
        assert metric in used, what


def test_shipped_as_a_configmap_for_the_sidecar(tools: pathlib.Path) -> None:
    def render(*values: str) -> list[dict]:
        proc = subprocess.run([str(tools / "helm"), "template", RELEASE, str(CHART), "-n", NAMESPACE, *values],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "ConfigMap"]

    assert render() == []  # opt-in
    (cm,) = render("--set", "grafanaDashboard.enabled=true")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["namespace"] == NAMESPACE
    assert json.loads(cm["data"]["prefect-workpool-operator.json"]) == json.loads(DASHBOARD.read_text())
    (cm,) = render("--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.namespace=monitoring",
                   "--set", "grafanaDashboard.annotations.grafana_folder=Platform")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}


def test_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert board["uid"] and board["templating"]["list"][0]["type"] == "datasource"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel.get("description"), panel["title"]
    # Every panel filters by the namespace/policy variables where its metric has those labels.
    for where, expr in dashboard_expressions().items():
        if re.search(r"pwo_(pool|worker|runs|stale|reconcile|cycles|condition|aws_call)", expr) and "variable" not in where:
            assert 'namespace=~".*"' in expr, where
