"""core.why on plain data: the row named is the row decide's table gives, and the words say it."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from prefect_workpool_operator.core import stale, why
from prefect_workpool_operator.core.stale import Claimer, Infrastructure, InfraReading, PendingRun, RecoveryRules

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
FACTS = why.RunFacts("PENDING", "Pending", "pool", "default")


def rules(**over: object) -> RecoveryRules:
    base = dict(pending_timeout=timedelta(minutes=10), hard_timeout=None, hard_timeout_overrides_live_claimer=False,
                confirm_after=timedelta(seconds=30), action="Reschedule", max_requeues=3, on_exhausted="MarkCrashed",
                max_per_cycle=50)
    return RecoveryRules(**{**base, **over})  # type: ignore[arg-type]


def run(age: timedelta = timedelta(minutes=11), **over: object) -> PendingRun:
    return PendingRun(**{"id": "r1", "pending_since": NOW - age, "claimer": "w1", **over})  # type: ignore[arg-type]


# The row each (claimer, infrastructure, evidence) combination falls in, by the table's own words.
def expected_row(claimer: Claimer, infra: Infrastructure, evidence: bool) -> int:
    if infra is Infrastructure.ALIVE:
        return 1
    if infra is Infrastructure.GONE:
        return 2
    if infra is Infrastructure.UNKNOWN:
        return 3
    if claimer is Claimer.ONLINE:
        return 4
    if infra is Infrastructure.NONE_FOUND:
        return 5
    return 7 if evidence else 6


@pytest.mark.parametrize("claimer,infra,evidence,hard", list(itertools.product(
    list(Claimer), list(Infrastructure), [False, True], [None, timedelta(minutes=5)])))
def test_the_row_named_is_the_tables_row(claimer: Claimer, infra: Infrastructure, evidence: bool,
                                         hard: timedelta | None) -> None:
    r = run(infrastructure_pid="c::arn" if evidence else None)
    rule = rules(hard_timeout=hard, hard_timeout_overrides_live_claimer=hard is not None)
    decision = stale.decide(r, claimer, InfraReading(infra), rule, NOW)
    assert why.rule_row(decision, infra) == expected_row(claimer, infra, evidence)
    answer = why.explain("ns/p", FACTS, why.Reading(r, claimer, None, InfraReading(infra)), rule, now=NOW)
    assert answer.row == expected_row(claimer, infra, evidence)
    assert f"row {answer.row} of core.stale.decide" in answer.text()
    assert answer.verdict == ("Recover" if decision.recover else "HandsOff" if decision.hands_off else "Hold")
    assert ("two readings at least 30s apart" in answer.text()) == decision.recover


def test_cap_exhausted_names_on_exhausted() -> None:
    reading = why.Reading(run(requeues=3), Claimer.OFFLINE, None, InfraReading(Infrastructure.NONE_FOUND))
    text = why.explain("ns/p", FACTS, reading, rules(), now=NOW).text()
    assert "cap exhausted: requeued 3 time(s), maxRequeuesPerRun 3 → onExhausted MarkCrashed" in text
    below = why.explain("ns/p", FACTS, why.Reading(run(requeues=2), Claimer.OFFLINE, None,
                                                     InfraReading(Infrastructure.NONE_FOUND)), rules(), now=NOW)
    assert "Reschedule (requeue 3 of at most 3)" in below.text()


def test_dry_run_and_suspend_say_nothing_is_written() -> None:
    reading = why.Reading(run(), Claimer.STOPPED, None, InfraReading(Infrastructure.GONE, "stopCode EssentialContainerExited"))
    assert "dryRun: nothing is written" in why.explain("ns/p", FACTS, reading, rules(), now=NOW, dry_run=True).text()
    assert "suspended" in why.explain("ns/p", FACTS, reading, rules(), now=NOW, suspended=True).text()
    assert "gone: stopCode EssentialContainerExited" in why.explain("ns/p", FACTS, reading, rules(), now=NOW).text()


def test_not_stale_says_when() -> None:
    reading = why.Reading(run(age=timedelta(minutes=4)), Claimer.OFFLINE, None, InfraReading(Infrastructure.NONE_FOUND))
    answer = why.explain("ns/p", FACTS, reading, rules(), now=NOW)
    assert answer.verdict == "NotStale" and "not stale yet (6m to go)" in answer.text()


def test_claimer_words_name_the_events() -> None:
    claimed = NOW - timedelta(minutes=11)
    r = run(claimed_at=claimed)
    life = stale.WorkerLifecycle(started=NOW - timedelta(minutes=2))
    text = why.explain("ns/p", FACTS, why.Reading(r, Claimer.RESTARTED, life, InfraReading(Infrastructure.NONE_FOUND)),
                       rules(), now=NOW).text()
    assert "'w1': restarted since the claim" in text and "started 2026-11-30T11:58:00Z" in text
    assert "claimed at 2026-11-30T11:49:00Z (submitted-flow-run event)" in text


@pytest.mark.parametrize("facts,scope,problem", [
    (FACTS, why.Scope("pool"), None),
    (FACTS, why.Scope("other"), "work pool 'pool', not the policy's 'other'"),
    (FACTS, why.Scope("pool", ("critical",)), "work queue 'default', outside the policy's critical"),
    (FACTS, why.Scope("pool", (), ("etl",)), "lacks the tag(s) the policy's staleRuns.tags require: etl"),
])
def test_scope(facts: why.RunFacts, scope: why.Scope, problem: str | None) -> None:
    got = why.scope_problem("r1", facts, scope)
    assert (got is None) if problem is None else (problem in (got or ""))


def test_moved_on() -> None:
    answer = why.not_pending("ns/p", "r1", why.RunFacts("RUNNING", "Running", "pool", "default"))
    assert answer.verdict == "NotPending" and "moved on" in answer.text()
