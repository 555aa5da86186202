"""The chart's alert rules and dashboard queries, and the metric names they use.

Shared by the offline tests (tests/unit/deploy/test_alerts.py, test_dashboard.py) and the e2e
test that compares them with a real operator's /metrics (tests/e2e/test_helm.py).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "prefect-workpool-operator"
DASHBOARD = CHART / "dashboards" / "prefect-workpool-operator.json"
RELEASE, NAMESPACE = "pwo", "ops"  # what tests/unit/promtool/alerts_test.yaml expects
# Grafana's variables, replaced by a value Prometheus accepts so the query can be parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$namespace": ".*",
                     "$policy": ".*", "$shard": ".*"}
_METRIC = re.compile(r"\b(pwo_[a-z0-9_]+|up)\b(?!\s*\()")
_SELECTOR = re.compile(r"\b(pwo_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")


def render_rules(helm: str, *values: str) -> dict[str, Any]:
    """The PrometheusRule's ``spec`` (its ``groups``), as a promtool rules file holds it."""
    proc = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "prometheusRule.enabled=true",
         "--show-only", "templates/prometheusrule.yaml", *values],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rule = yaml.safe_load(proc.stdout)
    assert rule["kind"] == "PrometheusRule"
    return {"groups": rule["spec"]["groups"]}


def alert_expressions(rules: dict[str, Any]) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard_expressions(dashboard: dict[str, Any] | None = None) -> dict[str, str]:
    """Every query of the dashboard (panels and template variables), Grafana variables filled in."""
    board = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    found: dict[str, str] = {}
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            found[f"{panel['title']} / {target.get('refId', '?')}"] = _fill(target["expr"])
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(metric, label) is Grafana's, not PromQL: the metric selector is what Prometheus runs.
            match = re.fullmatch(r"label_values\((.*),\s*[a-z_]+\)", query)
            found[f"variable {variable['name']}"] = _fill(match.group(1) if match else query)
    return found


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))  # collapsed rows hold their panels
    return out


def _fill(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """The series names a query reads (the operator's all start with pwo_; ``up`` is Prometheus's)."""
    return set(_METRIC.findall(expr))


def label_matchers(expr: str) -> set[tuple[str, str, str]]:
    """(metric, label, value) of every matcher on an operator metric."""
    return {(metric, label, value) for metric, body in _SELECTOR.findall(expr)
            for label, _, value in _MATCHER.findall(body)}


def exported_names(scrape: str) -> dict[str, set[str]]:
    """Sample names a /metrics page declares (also the families with no sample yet), with the
    label names seen on their samples."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"), "gauge": ("",)}
    for family in text_string_to_metric_families(scrape):
        for suffix in suffixes.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def promtool_check_rules(promtool: str, rules: dict[str, Any], tmp: pathlib.Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
