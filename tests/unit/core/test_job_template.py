from datetime import timedelta

from prefect_workpool_operator.core.job_template import plan_template, template_condition, timeout_consistency

TEMPLATE = {
    "job_configuration": {"task_start_timeout_seconds": "{{ task_start_timeout_seconds }}"},
    "variables": {"properties": {
        "task_start_timeout_seconds": {"type": "integer", "default": 300},
        "match_latest_revision_in_family": {"type": "boolean", "default": False},
        "cpu": {"type": "integer", "default": 1024},
    }},
}


def test_drift_changes_only_declared_defaults() -> None:
    plan = plan_template(TEMPLATE, {"task_start_timeout_seconds": 600, "cpu": 1024})
    assert plan.drift == {"task_start_timeout_seconds": (300, 600)}
    assert plan.template["variables"]["properties"]["task_start_timeout_seconds"]["default"] == 600
    assert plan.template["variables"]["properties"]["cpu"] == TEMPLATE["variables"]["properties"]["cpu"]
    assert plan.template["job_configuration"] == TEMPLATE["job_configuration"]
    assert TEMPLATE["variables"]["properties"]["task_start_timeout_seconds"]["default"] == 300  # input untouched


def test_in_sync_and_missing() -> None:
    assert plan_template(TEMPLATE, {"cpu": 1024}).in_sync
    plan = plan_template(TEMPLATE, {"task_watch_poll_interval": 5.0})
    cond = template_condition(plan, pool="p", dry_run=False, declared=1)
    assert (cond.status, cond.reason) == ("False", "VariableNotInTemplate")
    assert "task_watch_poll_interval" in cond.message and plan.template is None


def test_conditions() -> None:
    drift = plan_template(TEMPLATE, {"match_latest_revision_in_family": True})
    assert template_condition(drift, pool="p", dry_run=True, declared=1).reason == "DryRun"
    repaired = template_condition(drift, pool="p", dry_run=False, declared=1)
    assert repaired.reason == "Repaired" and "False -> True" in repaired.message


def test_pending_timeout_consistency() -> None:
    assert timeout_consistency(timedelta(minutes=2), TEMPLATE, {}).reason == "PendingTimeoutBelowTaskStartTimeout"
    assert timeout_consistency(timedelta(minutes=10), TEMPLATE, {}).reason == "Consistent"
    # The declared value is what the template will hold after this cycle.
    assert timeout_consistency(timedelta(minutes=6), TEMPLATE, {"task_start_timeout_seconds": 600}).status == "False"
    assert timeout_consistency(timedelta(minutes=6), {"variables": {"properties": {}}}, {}).reason == "NoTaskStartTimeout"
    assert timeout_consistency(None, TEMPLATE, {}) is None
