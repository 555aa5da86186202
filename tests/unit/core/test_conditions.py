from datetime import datetime, timedelta, timezone

from prefect_workpool_operator.core.conditions import Condition, changed_conditions, merge_conditions

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def test_first_write_stamps_now_and_generation() -> None:
    merged = merge_conditions(None, [Condition("Ready", "True", "Reconciled", "ok")], T0, 3)
    assert merged == [{
        "type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
        "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 3,
    }]


def test_transition_time_kept_while_status_unchanged_even_if_reason_changes() -> None:
    first = merge_conditions(None, [Condition("Ready", "False", "Unreachable", "a")], T0, 1)
    second = merge_conditions(first, [Condition("Ready", "False", "ServerError", "b")], T1, 1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert second[0]["reason"] == "ServerError" and second[0]["message"] == "b"


def test_transition_time_moves_when_status_flips() -> None:
    first = merge_conditions(None, [Condition("Ready", "False", "SecretNotFound", "a")], T0, 1)
    second = merge_conditions(first, [Condition("Ready", "True", "Reconciled", "b")], T1, 1)
    assert second[0]["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_conditions_not_reported_this_cycle_are_kept() -> None:
    first = merge_conditions(None, [Condition("Ready", "True", "R", ""), Condition("WorkPoolReady", "True", "PoolReady", "")], T0, 1)
    second = merge_conditions(first, [Condition("Ready", "False", "Unreachable", "")], T1, 2)
    assert [c["type"] for c in second] == ["Ready", "WorkPoolReady"]
    assert second[1]["observedGeneration"] == 1


def test_changed_conditions_drive_events_only_on_change() -> None:
    previous = merge_conditions(None, [Condition("Ready", "True", "Reconciled", "x")], T0, 1)
    assert changed_conditions(previous, [Condition("Ready", "True", "Reconciled", "new message")]) == []
    flipped = [Condition("Ready", "False", "Unauthorized", "401")]
    assert changed_conditions(previous, flipped) == flipped
    assert changed_conditions(previous, [Condition("Ready", "True", "Suspended", "")])[0].reason == "Suspended"
