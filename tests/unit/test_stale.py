"""The stale-run decision on plain data: thresholds, ownership, caps, batches, actions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from prefect_workpool_operator.core import stale
from prefect_workpool_operator.core.stale import Infrastructure, PendingRun, RecoveryRules, plan_recovery

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
RULES = RecoveryRules(pending_timeout=timedelta(minutes=10), hard_timeout=timedelta(hours=1))


def run(id_: str, minutes: float, **kw) -> PendingRun:
    return PendingRun(id=id_, pending_since=NOW - timedelta(minutes=minutes), **kw)


def plan(runs, online=(), infra=None, rules=RULES):
    return plan_recovery(runs, online_workers=set(online), infrastructure=infra or {}, rules=rules, now=NOW)


def test_threshold_is_inclusive() -> None:
    p = plan([run("at", 10), run("under", 9.99), run("over", 11)])
    assert p.stale == 2
    assert sorted(p.reschedule) == ["at", "over"]


def test_prefilter_cutoff_admits_runs_claimed_early() -> None:
    # Claimed 10 s before its expected start, PENDING for exactly the timeout.
    expected_start = NOW - RULES.pending_timeout + timedelta(seconds=10)
    assert expected_start <= stale.candidate_cutoff(NOW, RULES.pending_timeout)
    assert expected_start + timedelta(seconds=1) > stale.candidate_cutoff(NOW, RULES.pending_timeout)


def test_oldest_first_and_batch_limit_defers_the_rest() -> None:
    rules = RecoveryRules(timedelta(minutes=10), timedelta(hours=1), max_per_cycle=2)
    p = plan([run("c", 20), run("a", 40), run("b", 30)], rules=rules)
    assert p.reschedule == ["a", "b"]
    assert p.skipped == {stale.BATCH_LIMIT: 1}


def test_claimer_online_is_left_alone_until_the_hard_timeout() -> None:
    p = plan([run("young", 30, claimer="w1"), run("old", 61, claimer="w1"), run("orphan", 30, claimer="w2")],
             online={"w1"})
    assert p.skipped == {stale.CLAIMER_ONLINE: 1}
    assert sorted(p.reschedule) == ["old", "orphan"]


def test_unknown_claimer_is_recoverable() -> None:
    assert plan([run("r", 15, claimer=None)], online={"w1"}).reschedule == ["r"]


@pytest.mark.parametrize(
    ("infra", "skip"),
    [(Infrastructure.ALIVE, stale.INFRASTRUCTURE_ALIVE), (Infrastructure.UNKNOWN, stale.INFRASTRUCTURE_UNKNOWN)],
)
def test_live_or_unknown_infrastructure_is_never_touched_even_past_hard_timeout(infra, skip) -> None:
    p = plan([run("r", 600, infrastructure_pid="c::arn")], infra={"r": infra})
    assert p.to_write == 0 and p.skipped == {skip: 1}


def test_unverified_infrastructure_waits_for_the_hard_timeout() -> None:
    runs = [run("pid", 30, infrastructure_pid="c::arn"), run("executed", 30, submission_reported=True),
            run("old", 61, infrastructure_pid="c::arn"), run("none", 30)]
    p = plan(runs)
    assert p.skipped == {stale.INFRASTRUCTURE_UNVERIFIED: 2}
    assert sorted(p.reschedule) == ["none", "old"]


def test_infrastructure_gone_is_recoverable() -> None:
    p = plan([run("r", 30, infrastructure_pid="c::arn")], infra={"r": Infrastructure.GONE})
    assert p.reschedule == ["r"]


@pytest.mark.parametrize(
    ("on_exhausted", "field"),
    [(stale.MARK_CRASHED, "mark_crashed"), (stale.CANCEL, "cancel"), (stale.REPORT_ONLY, "report_only")],
)
def test_cap_exhaustion_applies_on_exhausted(on_exhausted: str, field: str) -> None:
    rules = RecoveryRules(timedelta(minutes=10), timedelta(hours=1), max_requeues=2, on_exhausted=on_exhausted)
    p = plan([run("fresh", 20, requeues=1), run("tired", 20, requeues=2)], rules=rules)
    assert p.reschedule == ["fresh"]
    assert getattr(p, field) == ["tired"] and p.exhausted == ["tired"]


def test_zero_requeues_allowed_means_straight_to_on_exhausted() -> None:
    rules = RecoveryRules(timedelta(minutes=10), timedelta(hours=1), max_requeues=0)
    assert plan([run("r", 20)], rules=rules).mark_crashed == ["r"]


@pytest.mark.parametrize(("action", "field"), [(stale.MARK_CRASHED, "mark_crashed"), (stale.CANCEL, "cancel"),
                                               (stale.RESCHEDULE, "reschedule"), (stale.REPORT_ONLY, "report_only")])
def test_each_action(action: str, field: str) -> None:
    rules = RecoveryRules(timedelta(minutes=10), timedelta(hours=1), action=action)
    p = plan([run("r", 20, requeues=5)] if action != stale.RESCHEDULE else [run("r", 20)], rules=rules)
    assert getattr(p, field) == ["r"]
    assert p.to_write == (0 if action == stale.REPORT_ONLY else 1)


def test_report_only_does_not_consume_the_batch() -> None:
    rules = RecoveryRules(timedelta(minutes=10), timedelta(hours=1), action=stale.REPORT_ONLY, max_per_cycle=1)
    assert len(plan([run(str(i), 20) for i in range(5)], rules=rules).report_only) == 5


def cond(p, dry_run=False, failed=0):
    c = stale.recovery_condition(p, RULES, dry_run=dry_run, failed=failed)
    return c.status, c.reason


def test_conditions() -> None:
    assert cond(plan([run("r", 1)])) == ("True", "NoneStale")
    assert cond(plan([run("r", 20)])) == ("True", "Recovered")
    assert cond(plan([run("r", 20)]), dry_run=True) == ("False", "DryRun")
    assert cond(plan([run("r", 20)]), failed=1) == ("False", "RecoveryFailed")
    assert cond(plan([run("r", 20, claimer="w")], online={"w"})) == ("True", "Protected")
    exhausted = plan([run("r", 20, requeues=3)])
    assert cond(exhausted) == ("True", "CapExhausted")
    report = plan([run("r", 20)], rules=RecoveryRules(timedelta(minutes=10), timedelta(hours=1), action=stale.REPORT_ONLY))
    assert cond(report) == ("False", "ReportOnly")
    message = stale.recovery_condition(plan([run("a", 20), run("b", 20, claimer="w")], online={"w"}), RULES, dry_run=False).message
    assert message == "Reschedule 1 of 2 stale run(s). Skipped: 1 ClaimerOnline."
