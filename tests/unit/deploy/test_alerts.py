"""The chart's PrometheusRule: valid rules (promtool), each alert fired and held back by the
promtool unit tests in tests/unit/deploy/promtool/, each documented in docs/alerts.md, and each
reading only metrics, labels and reasons the operator really has."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest

from prefect_workpool_operator.metrics import OperatorMetrics
from sandbox.kube import build_tools
from tests.support.chart_monitoring import (
    REPO, alert_expressions, exported_names, label_matchers, metric_names, promtool_check_rules, render_rules,
)

UNIT_TESTS = pathlib.Path(__file__).parent / "promtool" / "alerts_test.yaml"
ALERTS_DOC = REPO / "docs" / "alerts.md"
OPERATOR_SOURCE = REPO / "operator" / "prefect_workpool_operator"


@pytest.fixture(scope="module")
def tools() -> pathlib.Path:
    return build_tools()


@pytest.fixture(scope="module")
def rules(tools: pathlib.Path) -> dict:
    return render_rules(str(tools / "helm"))


def test_rules_pass_promtool_check(tools: pathlib.Path, rules: dict, tmp_path: pathlib.Path) -> None:
    proc = promtool_check_rules(str(tools / "promtool"), rules, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_expressions(rules))} rules found" in proc.stdout


def test_promtool_unit_tests(tools: pathlib.Path, rules: dict, tmp_path: pathlib.Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run([str(tools / "promtool"), "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_a_wrong_expectation_fails(tools: pathlib.Path, rules: dict, tmp_path: pathlib.Path) -> None:
    """The unit tests can fail: a changed threshold breaks them."""
    changed = render_rules(str(tools / "helm"), "--set", "prometheusRule.recoveredRunsPerHour=100")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run([str(tools / "promtool"), "test", "rules", UNIT_TESTS.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "PrefectWorkPoolStaleRunsRecoveredRepeatedly" in proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing_and_quiet(rules: dict) -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    checks = [c for t in tests for c in t["alert_rule_test"]]
    fired = {c["alertname"] for c in checks if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert fired == set(alert_expressions(rules))
    assert quiet == set(alert_expressions(rules))


def test_every_alert_links_to_its_section_of_docs_alerts(rules: dict) -> None:
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", ALERTS_DOC.read_text(), flags=re.M)}
    for group in rules["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
            assert anchor == rule["alert"].lower() and anchor in headings, rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}


def test_alerts_read_only_what_the_operator_exports(rules: dict) -> None:
    metrics = OperatorMetrics()
    exported = exported_names(generate_latest(metrics.registry).decode())
    labels = {name: set(collector._labelnames)  # noqa: SLF001 (the declared label names)
              for collector in metrics.registry._collector_to_names  # noqa: SLF001
              for name in metrics.registry._collector_to_names[collector]}  # noqa: SLF001
    source = "\n".join(p.read_text() for p in OPERATOR_SOURCE.rglob("*.py"))
    for alert, expr in alert_expressions(rules).items():
        used = metric_names(expr)
        assert used and used - {"up"} <= set(exported), (alert, used - set(exported))
        for metric, label, value in label_matchers(expr):
            if label == "job":
                continue  # Prometheus's target label
            assert label in labels[metric], (alert, metric, label)
            if label == "reason":
                assert f'"{value}"' in source, (alert, value)  # a reason the operator really sets


def test_disabled_alerts_and_extra_labels(tools: pathlib.Path) -> None:
    rules = render_rules(str(tools / "helm"), "--set", "prometheusRule.disabledAlerts={PrefectWorkPoolScalingAtMax}",
                         "--set", "prometheusRule.alertLabels.team=platform",
                         "--set", "prometheusRule.job=custom", "--set", "prometheusRule.runbookBaseUrl=https://docs.example.com/alerts")
    names = alert_expressions(rules)
    assert "PrefectWorkPoolScalingAtMax" not in names and len(names) == 10
    for rule in rules["groups"][0]["rules"]:
        assert rule["labels"]["team"] == "platform"
        assert rule["annotations"]["runbook_url"].startswith("https://docs.example.com/alerts#")
        assert 'job="custom"' in rule["expr"]
