"""Metrics follow the status a cycle wrote."""

from prometheus_client import generate_latest

from prefect_workpool_operator.metrics import OperatorMetrics

META = {"namespace": "data", "name": "etl"}
SPEC = {"prefect": {"workPool": "ecs-pool"}}


def status(ready: str, reason: str, recovered: int = 0) -> dict:
    return {
        "runs": {"late": 4, "pending": 2, "running": 1},
        "workers": {"online": 2, "offline": 0},
        "scaling": {"desired": 3, "running": 2, "pending": 1, "recommendation": 3},
        "staleRuns": {"stale": 5, "recovered": recovered},
        "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
    }


def text(m: OperatorMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_gauges_follow_the_status() -> None:
    m = OperatorMetrics()
    m.record_cycle(META, SPEC, status("True", "Reconciled", recovered=5), 0.2)
    m.record_cycle(META, SPEC, status("False", "Unreachable"), 0.3)
    out = text(m)
    labels = 'namespace="data",policy="etl",pool="ecs-pool"'
    assert f'pwo_pool_runs{{{labels},state="late"}} 4.0' in out
    assert f'pwo_worker_service_tasks{{count="desired",{labels}}} 3.0' in out  # labels print sorted
    assert f"pwo_runs_recovered_total{{{labels}}} 5.0" in out
    # Only the current status of each condition type is exported.
    assert f'pwo_condition{{{labels},reason="Unreachable",status="False",type="Ready"}} 1.0' in out
    assert 'reason="Reconciled"' not in out
    assert 'pwo_reconcile_errors_total{namespace="data",policy="etl",reason="Unreachable"} 1.0' in out
    assert 'pwo_reconcile_duration_seconds_count{namespace="data",policy="etl"} 2.0' in out


def test_deleted_policy_series_go_away() -> None:
    m = OperatorMetrics()
    m.record_cycle(META, SPEC, status("True", "Reconciled"), 0.1)
    m.forget(META)
    assert 'policy="etl"' not in text(m)


def test_aws_calls_are_counted() -> None:
    m = OperatorMetrics()
    m.record_aws_calls({"DescribeServices": 1, "DescribeTasks": 0})
    assert 'pwo_aws_requests_total{operation="DescribeServices"} 1.0' in text(m)
    assert "DescribeTasks" not in text(m)


def test_recoveries_by_action_reason_and_cap() -> None:
    m = OperatorMetrics()
    st = status("True", "Reconciled", recovered=3)
    st["lastRecovery"] = {"rescheduled": 2, "crashed": 1, "cancelled": 0, "exhausted": 1,
                          "reasons": {"TaskGone": 2, "ClaimerGone": 1}}
    m.record_cycle(META, SPEC, st, 0.1)
    m.record_cycle(META, SPEC, status("True", "Reconciled"), 0.1)  # a quiet cycle adds nothing
    out = text(m)
    labels = 'namespace="data",policy="etl",pool="ecs-pool"'
    assert f'pwo_runs_changed_total{{action="rescheduled",{labels}}} 2.0' in out
    assert f'pwo_runs_changed_total{{action="crashed",{labels}}} 1.0' in out
    assert f'pwo_runs_changed_total{{action="cancelled",{labels}}} 0.0' in out  # exists from the start, for increase()
    assert f'pwo_runs_recovered_by_reason_total{{{labels},reason="TaskGone"}} 2.0' in out
    assert f'pwo_runs_exhausted_total{{{labels}}} 1.0' in out
    m.forget(META)
    assert 'policy="etl"' not in text(m)


def test_failed_cycles_and_spent_aws_budget_are_counted() -> None:
    m = OperatorMetrics()
    m.record_failure(META, "InternalError")
    m.record_aws_budget(META, 0)
    assert 'pwo_aws_call_budget_exhausted_total{namespace="data",policy="etl"} 0.0' in text(m)
    m.record_aws_budget(META, 3)
    out = text(m)
    assert 'pwo_reconcile_errors_total{namespace="data",policy="etl",reason="InternalError"} 1.0' in out
    assert 'pwo_aws_call_budget_exhausted_total{namespace="data",policy="etl"} 1.0' in out
def test_a_cycle_that_changed_nothing_sets_no_gauge_whatever_the_fleet_size() -> None:
    m = OperatorMetrics()
    for i in range(300):
        m.record_cycle({"namespace": "data", "name": f"p{i}"}, SPEC, status("True", "Reconciled"), 0.1)
    calls: list[tuple] = []
    for gauge in (m.runs, m.workers, m.ecs_tasks, m.recommended, m.stale, m.condition):
        original = gauge.labels
        gauge.labels = lambda *labels, _o=original: calls.append(labels) or _o(*labels)  # type: ignore[method-assign]
    m.record_cycle({"namespace": "data", "name": "p7"}, SPEC, status("True", "Reconciled"), 0.1)
    assert calls == []
    changed = status("False", "Unreachable")
    changed["runs"]["late"] = 9
    m.record_cycle({"namespace": "data", "name": "p7"}, SPEC, changed, 0.1)
    assert sorted(c[-1] for c in calls) == ["Unreachable", "late"]  # the late count and the new Ready series
    out = text(m)
    assert 'policy="p7",pool="ecs-pool",reason="Reconciled"' not in out  # the old Ready series is gone
    assert 'policy="p8",pool="ecs-pool",reason="Reconciled"' in out


def test_a_renamed_pool_leaves_no_series_behind() -> None:
    m = OperatorMetrics()
    m.record_cycle(META, SPEC, status("True", "Reconciled"), 0.1)
    m.record_cycle(META, {"prefect": {"workPool": "other"}}, status("True", "Reconciled"), 0.1)
    assert 'pool="ecs-pool"' not in text(m)
    m.cycle_started(META, at=1_800_000_000.0, late=4.0)
    assert 'pwo_cycle_started_timestamp_seconds{namespace="data",policy="etl"} 1.8e+09' in text(m)
    assert "pwo_cycle_start_delay_seconds_bucket{le=\"5.0\"} 1.0" in text(m)
    m.forget(META)
    assert 'policy="etl"' not in text(m)
