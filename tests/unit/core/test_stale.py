"""The stale-run decision on plain data: the table row by row, the two-observation rule,
claimer identity, caps, batches, actions, conditions; plus properties over any
sequence of observations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_workpool_operator.core import stale, stale_plan
from tests.support import spec_rules
from prefect_workpool_operator.core.stale import (
    Claimer,
    InfraReading,
    Infrastructure,
    PendingRun,
    RecoveryRules,
    WorkerLifecycle,
    claimer_status,
    decide,
)
from prefect_workpool_operator.core.stale_plan import Observations, plan_recovery

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
INTERVAL = timedelta(seconds=30)
RULES = spec_rules.recovery(confirm_after=INTERVAL)
ALIVE = InfraReading(Infrastructure.ALIVE)
STOPPED = InfraReading(Infrastructure.GONE, "task abc STOPPED, stopCode TaskFailedToStart, stoppedReason 'no capacity'")
MISSING = InfraReading(Infrastructure.GONE, "task unknown to ECS")
NONE_FOUND = InfraReading(Infrastructure.NONE_FOUND)
UNKNOWN = InfraReading(Infrastructure.UNKNOWN, "ECS DescribeTasks: Throttled")
NOT_CHECKED = stale.NOT_CHECKED
GONE_CLAIMERS = [Claimer.OFFLINE, Claimer.RESTARTED, Claimer.STOPPED, Claimer.UNKNOWN]


def run(id_: str, minutes: float, **kw) -> PendingRun:
    return PendingRun(id=id_, pending_since=NOW - timedelta(minutes=minutes), **kw)


def plan(runs, claimers=None, infra=None, rules=RULES, observations=None, now=NOW):
    """One cycle; with no Observations given, the run was already seen recoverable one interval ago."""
    if observations is None:
        observations = Observations()
        plan_recovery(runs, claimers=claimers or {}, infrastructure=infra or {}, rules=rules,
                      observations=observations, now=now - rules.confirm_after)
    return plan_recovery(runs, claimers=claimers or {}, infrastructure=infra or {}, rules=rules,
                         observations=observations, now=now)


# -- the table, row by row ------------------------------------------------------------


@pytest.mark.parametrize("claimer", list(Claimer))
def test_row_alive_infrastructure_is_hands_off_whoever_claimed(claimer: Claimer) -> None:
    d = decide(run("r", 600), claimer, ALIVE, spec_rules.recovery(hard_timeout=timedelta(hours=1), hard_timeout_overrides_live_claimer=True), NOW)
    assert (d.reason, d.recover, d.hands_off) == (stale.INFRASTRUCTURE_ALIVE, False, True)


@pytest.mark.parametrize("claimer", list(Claimer))
@pytest.mark.parametrize("reading", [STOPPED, MISSING])
def test_row_proven_gone_recovers_naming_the_proof(claimer: Claimer, reading: InfraReading) -> None:
    d = decide(run("r", 11, claimer="w1"), claimer, reading, RULES, NOW)
    assert (d.reason, d.recover) == (stale.TASK_GONE, True)
    assert reading.detail in d.message and "no live worker" not in d.message


@pytest.mark.parametrize("claimer", list(Claimer))
def test_row_unknown_infrastructure_holds_even_past_the_hard_timeout(claimer: Claimer) -> None:
    rules = spec_rules.recovery(hard_timeout=timedelta(hours=1), hard_timeout_overrides_live_claimer=True)
    d = decide(run("r", 600, claimer="w1"), claimer, UNKNOWN, rules, NOW)
    assert (d.reason, d.hold) == (stale.INFRASTRUCTURE_UNKNOWN, True)
    assert "Throttled" in d.message


@pytest.mark.parametrize("reading", [NONE_FOUND, NOT_CHECKED])
def test_row_live_same_process_claimer_is_hands_off_with_the_age(reading: InfraReading) -> None:
    d = decide(run("r", 42, claimer="w1", infrastructure_pid="c::t"), Claimer.ONLINE, reading, RULES, NOW)
    assert (d.reason, d.hands_off) == (stale.CLAIMER_ALIVE, True)
    assert "'w1'" in d.message and "42m" in d.message


@pytest.mark.parametrize("claimer", GONE_CLAIMERS)
def test_row_gone_claimer_and_no_task_recovers(claimer: Claimer) -> None:
    d = decide(run("r", 11, claimer="w1"), claimer, NONE_FOUND, RULES, NOW)
    assert (d.reason, d.recover) == (stale.CLAIMER_GONE, True)
    assert "no ECS task exists" in d.message
    assert {Claimer.OFFLINE: "offline", Claimer.RESTARTED: "restarted", Claimer.STOPPED: "stopped",
            Claimer.UNKNOWN: "no worker"}[claimer] in d.message


@pytest.mark.parametrize("claimer", GONE_CLAIMERS)
def test_row_unchecked_infrastructure_recovers_only_without_a_reported_task(claimer: Claimer) -> None:
    bare = decide(run("r", 11, claimer="w1"), claimer, NOT_CHECKED, RULES, NOW)
    assert (bare.reason, bare.recover) == (stale.CLAIMER_GONE, True)
    assert "not verified" in bare.message
    for evidence in ({"infrastructure_pid": "c::t"}, {"submission_reported": True}):
        held = decide(run("r", 11, claimer="w1", **evidence), claimer, NOT_CHECKED, RULES, NOW)
        assert (held.reason, held.hold) == (stale.INFRASTRUCTURE_UNVERIFIED, True)


def test_hard_timeout_is_opt_in_and_acts_only_without_a_live_claimer() -> None:
    r = run("r", 61, claimer="w1", infrastructure_pid="c::t")
    assert decide(r, Claimer.OFFLINE, NOT_CHECKED, RULES, NOW).reason == stale.INFRASTRUCTURE_UNVERIFIED  # unset
    hard = spec_rules.recovery(hard_timeout=timedelta(hours=1))
    assert decide(run("r", 59, claimer="w1", infrastructure_pid="c::t"), Claimer.OFFLINE, NOT_CHECKED, hard,
                  NOW).reason == stale.INFRASTRUCTURE_UNVERIFIED
    d = decide(r, Claimer.OFFLINE, NOT_CHECKED, hard, NOW)
    assert (d.reason, d.recover, d.double_run_risk) == (stale.HARD_TIMEOUT, True, False)
    assert decide(r, Claimer.ONLINE, NOT_CHECKED, hard, NOW).reason == stale.CLAIMER_ALIVE
    assert decide(r, Claimer.ONLINE, NONE_FOUND, hard, NOW).reason == stale.CLAIMER_ALIVE


def test_overriding_a_live_claimer_needs_the_explicit_opt_in_and_names_the_risk() -> None:
    rules = spec_rules.recovery(hard_timeout=timedelta(hours=1), hard_timeout_overrides_live_claimer=True)
    young = decide(run("r", 59, claimer="w1"), Claimer.ONLINE, NONE_FOUND, rules, NOW)
    assert young.reason == stale.CLAIMER_ALIVE
    old = decide(run("r", 61, claimer="w1"), Claimer.ONLINE, NONE_FOUND, rules, NOW)
    assert (old.reason, old.recover, old.double_run_risk) == (stale.HARD_TIMEOUT_OVERRIDE, True, True)
    assert "may run twice" in old.message


# -- who the claimer is ---------------------------------------------------------------


def test_claimer_identity_follows_its_process() -> None:
    claimed = NOW - timedelta(minutes=20)
    r = PendingRun("r", pending_since=claimed, claimer="w1", claimed_at=claimed)
    before, after = claimed - timedelta(minutes=5), claimed + timedelta(minutes=5)
    online = {"w1"}
    assert claimer_status(r, online, {}) is Claimer.ONLINE
    assert claimer_status(r, set(), {}) is Claimer.OFFLINE
    assert claimer_status(r, online, {"w1": WorkerLifecycle(started=before)}) is Claimer.ONLINE
    assert claimer_status(r, online, {"w1": WorkerLifecycle(started=after)}) is Claimer.RESTARTED
    assert claimer_status(r, online, {"w1": WorkerLifecycle(started=before, stopped=after)}) is Claimer.STOPPED
    assert claimer_status(r, online, {"w2": WorkerLifecycle(started=after)}) is Claimer.ONLINE  # another worker
    assert claimer_status(PendingRun("r", claimed), online, {}) is Claimer.UNKNOWN


def test_claim_time_falls_back_to_the_pending_time() -> None:
    r = PendingRun("r", pending_since=NOW - timedelta(minutes=20), claimer="w1")
    assert claimer_status(r, {"w1"}, {"w1": WorkerLifecycle(started=NOW - timedelta(minutes=19))}) is Claimer.RESTARTED
    assert claimer_status(r, {"w1"}, {"w1": WorkerLifecycle(started=NOW - timedelta(minutes=21))}) is Claimer.ONLINE


# -- two observations -----------------------------------------------------------------


def test_one_gone_reading_never_acts() -> None:
    obs = Observations()
    r = [run("r", 11, infrastructure_pid="c::t")]
    first = plan(r, infra={"r": STOPPED}, observations=obs)
    assert first.to_write == 0 and first.skipped == {stale.AWAITING_CONFIRMATION: 1}
    assert "seen so once" in stale_plan.recovery_condition(first, RULES, dry_run=False).message
    alive = plan(r, infra={"r": ALIVE}, observations=obs, now=NOW + INTERVAL)  # the odd reading is forgotten
    assert alive.to_write == 0
    again = plan(r, infra={"r": STOPPED}, observations=obs, now=NOW + 2 * INTERVAL)
    assert again.to_write == 0 and again.skipped == {stale.AWAITING_CONFIRMATION: 1}
    confirmed = plan(r, infra={"r": STOPPED}, observations=obs, now=NOW + 3 * INTERVAL)
    assert confirmed.reschedule == ["r"]


def test_the_second_reading_must_be_an_interval_later() -> None:
    obs = Observations()
    r = [run("r", 11)]
    claimers = {"r": Claimer.OFFLINE}
    assert plan(r, claimers, {"r": NONE_FOUND}, observations=obs).to_write == 0
    soon = plan(r, claimers, {"r": NONE_FOUND}, observations=obs, now=NOW + INTERVAL - timedelta(seconds=1))
    assert soon.to_write == 0
    assert plan(r, claimers, {"r": NONE_FOUND}, observations=obs, now=NOW + INTERVAL).reschedule == ["r"]


def test_an_unknown_reading_in_between_keeps_the_first_one() -> None:
    # DescribeTasks throttled for a while: hold, then act on the first answer after it lifts.
    obs = Observations()
    r = [run("r", 11, infrastructure_pid="c::t")]
    plan(r, infra={"r": STOPPED}, observations=obs)
    for k in range(1, 5):
        held = plan(r, infra={"r": UNKNOWN}, observations=obs, now=NOW + k * INTERVAL)
        assert held.to_write == 0 and held.skipped == {stale.INFRASTRUCTURE_UNKNOWN: 1}
    assert plan(r, infra={"r": STOPPED}, observations=obs, now=NOW + 5 * INTERVAL).reschedule == ["r"]


def test_a_new_claim_starts_afresh_and_runs_no_longer_stale_are_forgotten() -> None:
    obs = Observations()
    plan([run("r", 11), run("s", 11)], {"r": Claimer.OFFLINE, "s": Claimer.OFFLINE}, observations=obs)
    assert set(obs.first) == {"r", "s"}
    reclaimed = run("r", 10.5)  # requeued and claimed again: a different PENDING time
    p = plan([reclaimed], {"r": Claimer.OFFLINE}, observations=obs, now=NOW + INTERVAL)
    assert p.to_write == 0 and set(obs.first) == {"r"}  # "s" left PENDING: forgotten


# -- plan: thresholds, order, caps, actions ---------------------------------------------


def test_threshold_is_inclusive() -> None:
    p = plan([run("at", 10), run("under", 9.99), run("over", 11)], observations=Observations())
    assert p.stale == 2
    assert sorted(p.decisions) == ["at", "over"]


def test_prefilter_cutoff_admits_runs_claimed_early() -> None:
    # Claimed 10 s before its expected start, PENDING for exactly the timeout.
    expected_start = NOW - RULES.pending_timeout + timedelta(seconds=10)
    assert expected_start <= stale.candidate_cutoff(NOW, RULES.pending_timeout)
    assert expected_start + timedelta(seconds=1) > stale.candidate_cutoff(NOW, RULES.pending_timeout)


def test_oldest_first_and_batch_limit_defers_the_rest() -> None:
    rules = spec_rules.recovery(max_per_cycle=2)
    p = plan([run("c", 20), run("a", 40), run("b", 30)], rules=rules)
    assert p.reschedule == ["a", "b"]
    assert p.skipped == {stale.BATCH_LIMIT: 1}


@pytest.mark.parametrize(
    ("on_exhausted", "field"),
    [(stale.MARK_CRASHED, "mark_crashed"), (stale.CANCEL, "cancel"), (stale.REPORT_ONLY, "report_only")],
)
def test_cap_exhaustion_applies_on_exhausted(on_exhausted: str, field: str) -> None:
    rules = spec_rules.recovery(max_requeues=2, on_exhausted=on_exhausted)
    p = plan([run("fresh", 20, requeues=1), run("tired", 20, requeues=2)], rules=rules)
    assert p.reschedule == ["fresh"]
    assert getattr(p, field) == ["tired"] and p.exhausted == ["tired"]


def test_zero_requeues_allowed_means_straight_to_on_exhausted() -> None:
    rules = spec_rules.recovery(max_requeues=0)
    assert plan([run("r", 20)], rules=rules).mark_crashed == ["r"]


@pytest.mark.parametrize(("action", "field"), [(stale.MARK_CRASHED, "mark_crashed"), (stale.CANCEL, "cancel"),
                                               (stale.RESCHEDULE, "reschedule"), (stale.REPORT_ONLY, "report_only")])
def test_each_action(action: str, field: str) -> None:
    rules = spec_rules.recovery(action=action)
    p = plan([run("r", 20, requeues=5)] if action != stale.RESCHEDULE else [run("r", 20)], rules=rules)
    assert getattr(p, field) == ["r"]
    assert p.to_write == (0 if action == stale.REPORT_ONLY else 1)


def test_report_only_does_not_consume_the_batch() -> None:
    rules = spec_rules.recovery(action=stale.REPORT_ONLY, max_per_cycle=1)
    assert len(plan([run(str(i), 20) for i in range(5)], rules=rules).report_only) == 5


# -- the condition tells the true reason ------------------------------------------------


def cond(p, dry_run=False, failed=0):
    c = stale_plan.recovery_condition(p, RULES, dry_run=dry_run, failed=failed)
    return c.status, c.reason


def test_conditions() -> None:
    assert cond(plan([run("r", 1)])) == ("True", "NoneStale")
    assert cond(plan([run("r", 20)])) == ("True", "Recovered")
    assert cond(plan([run("r", 20)]), dry_run=True) == ("False", "DryRun")
    assert cond(plan([run("r", 20)]), failed=1) == ("False", "RecoveryFailed")
    assert cond(plan([run("r", 20, claimer="w")], {"r": Claimer.ONLINE})) == ("True", "ClaimerAlive")
    assert cond(plan([run("r", 20)], infra={"r": UNKNOWN})) == ("Unknown", "InfrastructureUnknown")
    assert cond(plan([run("r", 20)], infra={"r": ALIVE})) == ("True", "InfrastructureAlive")
    assert cond(plan([run("r", 20, infrastructure_pid="c::t")])) == ("Unknown", "InfrastructureUnverified")
    exhausted = plan([run("r", 20, requeues=3)])
    assert cond(exhausted) == ("True", "CapExhausted")
    report = plan([run("r", 20)], rules=spec_rules.recovery(action=stale.REPORT_ONLY))
    assert cond(report) == ("False", "ReportOnly")


def test_condition_messages_name_the_proof() -> None:
    p = plan([run("a", 30, infrastructure_pid="c::t"), run("b", 20, claimer="w")],
             {"a": Claimer.ONLINE, "b": Claimer.ONLINE}, {"a": STOPPED, "b": NONE_FOUND})
    message = stale_plan.recovery_condition(p, RULES, dry_run=False).message
    assert p.reschedule == ["a"]
    assert "TaskGone" in message and "stopCode TaskFailedToStart" in message
    assert "Left alone: 1 ClaimerAlive." in message
    assert "no live worker" not in message
    held = plan([run("c", 25, claimer="w")], {"c": Claimer.ONLINE}, {"c": NONE_FOUND})
    assert "'w' is online" in stale_plan.recovery_condition(held, RULES, dry_run=False).message


# -- properties over observation sequences ----------------------------------------------

READINGS = st.sampled_from([ALIVE, STOPPED, MISSING, NONE_FOUND, UNKNOWN, NOT_CHECKED])
CLAIMERS = st.sampled_from(list(Claimer))
RULE_SETS = st.builds(
    spec_rules.recovery,
    pending_timeout=st.just(timedelta(minutes=10)),
    hard_timeout=st.sampled_from([None, timedelta(minutes=15), timedelta(hours=1)]),
    hard_timeout_overrides_live_claimer=st.booleans(),
    confirm_after=st.just(INTERVAL),
)
# Gaps between observations: some shorter than an interval, some much longer.
GAPS = st.sampled_from([timedelta(seconds=s) for s in (1, 15, 29, 30, 31, 60, 600, 3600)])


def run_sequence(steps, rules, evidence) -> list[tuple[Claimer, InfraReading, stale_plan.RecoveryPlan]]:
    obs = Observations()
    r = run("r", 11, claimer="w1", **evidence)
    now = NOW
    out = []
    for claimer, reading, gap in steps:
        now += gap
        p = plan_recovery([r], claimers={"r": claimer}, infrastructure={"r": reading}, rules=rules,
                          observations=obs, now=now)
        out.append((claimer, reading, p))
    return out


EVIDENCE = st.sampled_from([{}, {"infrastructure_pid": "c::t"}, {"submission_reported": True}])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(CLAIMERS, READINGS, GAPS), min_size=1, max_size=12), RULE_SETS, EVIDENCE)
def test_no_sequence_acts_on_a_live_task(steps, rules, evidence) -> None:
    for _, reading, p in run_sequence(steps, rules, evidence):
        if reading.state is Infrastructure.ALIVE:
            assert p.to_write == 0 and not p.report_only


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(CLAIMERS, READINGS, GAPS), min_size=1, max_size=12), RULE_SETS, EVIDENCE)
def test_no_sequence_acts_on_a_live_same_process_claimer_without_proof(steps, rules, evidence) -> None:
    for claimer, reading, p in run_sequence(steps, rules, evidence):
        if claimer is Claimer.ONLINE and reading.state is not Infrastructure.GONE:
            acted = p.to_write > 0
            # Only the explicit opt-in may, and then its decision carries the double-run risk.
            assert not acted or (rules.hard_timeout_overrides_live_claimer
                                 and p.decisions["r"].double_run_risk)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(CLAIMERS, READINGS, GAPS), min_size=1, max_size=12), RULE_SETS, EVIDENCE)
def test_every_action_follows_an_earlier_recoverable_reading_an_interval_before(steps, rules, evidence) -> None:
    seen: list[tuple[timedelta, bool, bool]] = []  # (time, recoverable, hands off)
    elapsed = timedelta(0)
    for (claimer, reading, gap), (_, _, p) in zip(steps, run_sequence(steps, rules, evidence)):
        elapsed += gap
        d = p.decisions["r"]
        if p.to_write:
            # The streak since the last hands-off reading has a recoverable reading ≥ one interval earlier.
            streak_start = max((t for t, _, off in seen if off), default=None)
            earlier = [t for t, rec, _ in seen if rec and (streak_start is None or t > streak_start)]
            assert earlier and elapsed - min(earlier) >= INTERVAL
        seen.append((elapsed, d.recover, d.hands_off))


@settings(max_examples=200, deadline=None)
@given(CLAIMERS, READINGS, RULE_SETS, EVIDENCE)
def test_a_single_reading_never_acts(claimer, reading, rules, evidence) -> None:
    p = plan_recovery([run("r", 600, claimer="w1", **evidence)], claimers={"r": claimer},
                      infrastructure={"r": reading}, rules=rules, observations=Observations(), now=NOW)
    assert p.to_write == 0 and not p.report_only


# -- the cap before the per-run reads (lookup_window) -------------------------------------


def cycles_with_window(runs, readings, rules, cycles):
    """Drive ``cycles`` cycles an interval apart, each deciding only the window's runs;
    yields (now, window ids, plan) per cycle. ``readings(run_id, k)`` is cycle k's claimer."""
    observations = Observations()
    for k in range(cycles):
        now = NOW + k * rules.confirm_after
        window = stale_plan.lookup_window(runs, observations, rules)
        ids = {r.id for r in window}
        claimers = {r.id: readings(r.id, k) for r in window}
        p = plan_recovery(runs, claimers=claimers, infrastructure={}, rules=rules, observations=observations,
                          now=now, looked_at=ids)
        yield now, ids, p


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 30), cap=st.integers(1, 12),
       online=st.lists(st.tuples(st.integers(0, 29), st.integers(0, 12)), max_size=40))
def test_window_acts_only_on_two_looked_at_recoverable_readings(n: int, cap: int, online: list) -> None:
    """Whatever the cap and whichever runs' claimers come and go: a run is written only in a
    cycle that looked at it, after a recoverable reading in an earlier cycle at least one
    interval before with no hands-off reading between; never more than the cap per cycle,
    and the skipped count names every stale run not looked at as BatchLimit."""
    rules = spec_rules.recovery(confirm_after=INTERVAL, max_per_cycle=cap)
    runs = [run(f"r{i}", 20 + i) for i in range(n)]
    alive = set(online)
    readings = lambda rid, k: Claimer.ONLINE if (int(rid[1:]), k) in alive else Claimer.UNKNOWN  # noqa: E731
    history: dict[str, list[tuple[int, bool]]] = {}  # run -> [(cycle, recoverable)]
    for k, (now, ids, p) in enumerate(cycles_with_window(runs, readings, rules, 13)):
        assert len(ids) == min(len(runs), cap)
        assert p.skipped[stale.BATCH_LIMIT] == len(runs) - len(ids)
        assert p.to_write <= cap
        for rid in p.reschedule:
            assert rid in ids
            earlier = history.get(rid, [])
            # the last reading before this one was recoverable (a hands-off one would have wiped it)
            assert earlier and earlier[-1][1], (rid, earlier)
        for rid in ids:
            history.setdefault(rid, []).append((k, readings(rid, k) is not Claimer.ONLINE))
        for rid in p.reschedule:  # written: afterwards it would leave PENDING; forget it here
            history.pop(rid)
        runs[:] = [r for r in runs if r.id not in p.reschedule]


def test_window_recovers_everything_in_two_cycles_per_cap() -> None:
    rules = spec_rules.recovery(confirm_after=INTERVAL, max_per_cycle=2)
    runs = [run(f"r{i}", 20 + i) for i in range(5)]
    written = []
    for _, ids, p in cycles_with_window(runs, lambda rid, k: Claimer.UNKNOWN, rules, 6):
        written.append(sorted(p.reschedule))
        runs[:] = [r for r in runs if r.id not in p.reschedule]
    # oldest first; each pair seen, then confirmed the next cycle
    assert written == [[], ["r3", "r4"], [], ["r1", "r2"], [], ["r0"]]


def test_window_puts_awaiting_first_and_hands_off_last() -> None:
    rules = spec_rules.recovery(confirm_after=INTERVAL, max_per_cycle=2)
    observations = Observations()
    old_alive, old, young = run("old-alive", 50), run("old", 40), run("young", 20)
    plan_recovery([old_alive, young], claimers={"old-alive": Claimer.ONLINE, "young": Claimer.UNKNOWN},
                  infrastructure={}, rules=rules, observations=observations, now=NOW - INTERVAL)
    window = stale_plan.lookup_window([old_alive, old, young], observations, rules)
    # young awaits its confirmation; old was never seen; old-alive was hands-off: looked at when there is room
    assert [r.id for r in window] == ["young", "old"]
    assert [r.id for r in stale_plan.lookup_window([old_alive, young], observations, rules)] == ["young", "old-alive"]


def test_window_for_report_only_is_every_stale_run() -> None:
    rules = spec_rules.recovery(action=stale.REPORT_ONLY, max_per_cycle=1)
    assert len(stale_plan.lookup_window([run(str(i), 20) for i in range(5)], Observations(), rules)) == 5


# -- QuietPending: skipping the full listing while nothing can be stale -------------------------


def simulated_pool(events: list, minutes: int = 45) -> Iterator[tuple[int, datetime, dict[str, datetime]]]:
    """A pool minute by minute: event (m, r, True) puts run r in PENDING at minute m, (m, r,
    False) takes it out. Yields (minute, now, run -> PENDING since); the caller may remove
    the runs it recovers."""
    truth: dict[str, datetime] = {}
    by_minute: dict[int, list[tuple[str, bool]]] = {}
    for minute, rid, enters in events:
        by_minute.setdefault(minute, []).append((f"r{rid}", enters))
    for minute in range(minutes):
        now = NOW + timedelta(minutes=minute)
        for rid, enters in by_minute.get(minute, []):
            if enters and rid not in truth:
                truth[rid] = now - timedelta(seconds=1)
            elif not enters:
                truth.pop(rid, None)
        yield minute, now, truth


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 7), st.booleans()), max_size=60),
       cap=st.sampled_from([2, 10_000]))
def test_quiet_listing_never_misses_a_stale_run(events: list, cap: int) -> None:
    """A simulated pool: at minute m, run r enters PENDING (True) or leaves it (False).
    Listing every cycle finds stale runs at some cycles; the quiet cycle (list only the
    runs not remembered) must take the full listing at each of those cycles."""
    timeout = timedelta(minutes=5)
    quiet = stale.QuietPending(limit=cap)
    key = "pool"
    full_listings = 0
    for minute, now, truth in simulated_pool(events):
        pending = [PendingRun(r, since) for r, since in truth.items()]
        stale_now = [r for r in pending if stale.is_stale(r, now, timeout)]
        full = True
        if quiet.usable(key, now, timeout):
            new = [r for r in pending if r.id not in quiet.pending]
            if not any(stale.is_stale(r, now, timeout) for r in new):
                quiet.add(new)
                full = False
        if full:
            full_listings += 1
            quiet.remember(key, pending, now, timeout)
        assert full or not stale_now, (minute, stale_now)
    assert full_listings >= 1


def test_quiet_listing_skips_while_fresh_and_lists_at_the_threshold() -> None:
    timeout = timedelta(minutes=10)
    quiet = stale.QuietPending()
    runs = [PendingRun(f"r{i}", NOW - timedelta(seconds=5)) for i in range(3)]
    quiet.remember("k", runs, NOW, timeout)
    assert quiet.usable("k", NOW + timedelta(minutes=9), timeout)
    assert not quiet.usable("other scope", NOW, timeout)
    assert not quiet.usable("k", NOW + timedelta(minutes=10) - timedelta(seconds=5), timeout)  # r0 may be stale
    quiet.remember("k", [*runs, PendingRun("old", NOW - timeout)], NOW, timeout)  # a stale one: nothing kept
    assert not quiet.usable("k", NOW, timeout)


# -- staleness decided once: select_stale, used by observe and by the plan ---------------

AGES = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 1200)), max_size=25)  # (run, seconds PENDING)


def _runs(ages: list) -> list[PendingRun]:
    return [PendingRun(f"r{i}", NOW - timedelta(seconds=s)) for i, s in dict(ages).items()]


@settings(max_examples=200, deadline=None)
@given(ages=AGES, timeout_s=st.integers(1, 1200))
def test_select_stale_is_exactly_the_runs_past_the_threshold_oldest_first(ages: list, timeout_s: int) -> None:
    runs = _runs(ages)
    timeout = timedelta(seconds=timeout_s)
    chosen = stale.select_stale(runs, NOW, timeout)
    assert {r.id for r in chosen} == {r.id for r in runs if NOW - r.pending_since >= timeout}
    assert [r.pending_since for r in chosen] == sorted(r.pending_since for r in chosen)
    assert stale.select_stale(chosen, NOW, timeout) == chosen  # idempotent
    assert stale.select_stale(list(reversed(runs)), NOW, timeout) == chosen  # whatever the listing order


@settings(max_examples=150, deadline=None)
@given(ages=AGES, cap=st.integers(1, 8), claimers=st.lists(st.sampled_from(list(Claimer)), min_size=31, max_size=31))
def test_the_plan_decides_exactly_what_observe_selected(ages: list, cap: int, claimers: list) -> None:
    """Observe hands the plan select_stale's runs; the plan given every PENDING run (the
    non-stale ones too) decides the same: one rule, applied once."""
    runs = _runs(ages)
    rules = spec_rules.recovery(max_per_cycle=cap, confirm_after=INTERVAL)
    by_run = {r.id: claimers[int(r.id[1:])] for r in runs}
    plans = []
    for given_runs in (runs, stale.select_stale(runs, NOW, rules.pending_timeout)):
        observations = Observations()
        for now in (NOW - INTERVAL, NOW):
            current = [PendingRun(r.id, r.pending_since) for r in given_runs]
            window = stale_plan.lookup_window(stale.select_stale(current, now, rules.pending_timeout), observations, rules)
            p = plan_recovery(current, claimers=by_run, infrastructure={}, rules=rules, observations=observations,
                              now=now, looked_at={r.id for r in window})
        plans.append(p)
    everything, selected = plans
    assert (everything.stale, everything.reschedule, dict(everything.skipped)) == \
        (selected.stale, selected.reschedule, dict(selected.skipped))
    assert set(everything.decisions) <= {r.id for r in stale.select_stale(runs, NOW, rules.pending_timeout)}


def test_candidate_cutoff_admits_every_run_that_can_be_stale() -> None:
    """Any run claimed at most PREFETCH before its expected start and PENDING past the
    threshold passes the server-side pre-filter."""
    for timeout_s in (60, 600, 3600):
        timeout = timedelta(seconds=timeout_s)
        for claimed_early in (0, 5, 10):
            for pending_s in (timeout_s, timeout_s + 1, timeout_s * 3):
                since = NOW - timedelta(seconds=pending_s)
                expected = since + timedelta(seconds=claimed_early)
                assert stale.is_stale(PendingRun("r", since), NOW, timeout)
                assert expected <= stale.candidate_cutoff(NOW, timeout)


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 9), st.booleans()), max_size=70),
       recovered=st.lists(st.integers(0, 40), max_size=10))
def test_partial_listing_finds_every_stale_run_and_relists_no_fresh_one(events: list, recovered: list) -> None:
    """A pool where stale and fresh PENDING runs mix (runs requeued at some minutes leave
    PENDING). Each cycle lists only what QuietPending does not leave out: every stale run is
    listed every cycle, and a remembered run is never listed again before its threshold."""
    timeout = timedelta(minutes=5)
    quiet = stale.QuietPending()
    for minute, now, truth in simulated_pool(events):
        pending = [PendingRun(r, since) for r, since in truth.items()]
        if quiet.listable("pool"):
            kept = quiet.not_due(now, timeout)
            for r in kept:  # left out: so it cannot be stale now
                assert r not in truth or not stale.is_stale(PendingRun(r, truth[r]), now, timeout)
            listed = [r for r in pending if r.id not in kept]
            quiet.update(listed, now, timeout, kept)
        else:
            listed = pending
            quiet.remember("pool", listed, now, timeout)
        assert {r.id for r in stale.select_stale(pending, now, timeout)} <= {r.id for r in listed}
        if minute in recovered:  # the stale ones are requeued: they leave PENDING
            for r in stale.select_stale(pending, now, timeout):
                truth.pop(r.id, None)
