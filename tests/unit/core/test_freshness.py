"""core.freshness on plain data: a cached part is never served past what could have changed it.

A model of the world runs beside the cache: events (each touching some parts), the stream
dropping and coming back, time passing, reads that learn a due time / worker deadline.
Whenever the cache would serve a part, the model checks that since that part's read
started no event touched it, the stream stayed up under the same subscription, and
neither its resync period nor its own expiry (due time, worker deadline) has come.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_workpool_operator.core import freshness
from prefect_workpool_operator.core.freshness import COUNTS, PARTS, POOL, WORKERS, Freshness

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
RESYNC = timedelta(seconds=300)
parts = st.frozensets(st.sampled_from(sorted(PARTS)), min_size=1)
steps = st.lists(st.one_of(
    st.tuples(st.just("wait"), st.integers(1, 400)),
    st.tuples(st.just("event"), parts),
    st.tuples(st.just("drop"), st.none()),
    st.tuples(st.just("reconnect"), st.none()),
    st.tuples(st.just("cycle"), st.tuples(st.integers(0, 600), st.booleans())),
), max_size=40)


@settings(max_examples=400, deadline=None)
@given(steps)
def test_never_serves_a_part_past_a_change_a_gap_a_resync_or_its_expiry(script: list) -> None:
    state, now, epoch, subscriptions = Freshness(), T0, None, 0
    touched_at: dict[str, datetime] = {}  # the model: last event per part
    gap_at = T0  # the model: last time the stream went down or changed subscription
    for kind, arg in script:
        now += timedelta(microseconds=1)  # every step happens after the one before
        if kind == "wait":
            now += timedelta(seconds=arg)
        elif kind == "event":
            if epoch is not None:  # a down stream delivers nothing: that is the gap's danger
                state = freshness.touched(state, arg)
            for part in arg:
                touched_at[part] = now
        elif kind == "drop":
            epoch, gap_at = None, now
        elif kind == "reconnect":
            subscriptions += 1
            epoch, gap_at = subscriptions, now
        else:
            expiry_in, fail = arg
            need = freshness.needed(state, epoch=epoch, now=now, resync=RESYNC)
            for part in PARTS - need:
                read = state.reads[part]
                assert touched_at.get(part, datetime.min.replace(tzinfo=timezone.utc)) < read.started
                assert gap_at <= read.started and epoch is not None and read.epoch == epoch
                assert now < read.started + RESYNC
                assert read.expires is None or now < read.expires
            state = freshness.reading(state, need)
            if fail:
                state = freshness.read_failed(state, need)
                continue
            for part in need:
                expires = now + timedelta(seconds=expiry_in) if part in (COUNTS, WORKERS) else None
                state = freshness.read_done(state, part, started=now, epoch=epoch, expires=expires)


def test_a_quiet_live_stream_serves_every_part() -> None:
    state = Freshness()
    for part in PARTS:
        expires = None if part == POOL else T0 + timedelta(minutes=1)
        state = freshness.read_done(state, part, started=T0, epoch=3, expires=expires)
    assert freshness.needed(state, epoch=3, now=T0 + timedelta(seconds=30), resync=RESYNC) == frozenset()
    assert freshness.needed(state, epoch=3, now=T0 + timedelta(minutes=1), resync=RESYNC) == {COUNTS, WORKERS}
    assert freshness.needed(state, epoch=4, now=T0, resync=RESYNC) == PARTS
    assert freshness.needed(state, epoch=None, now=T0, resync=RESYNC) == PARTS
    assert freshness.needed(freshness.touched(state, frozenset({POOL})), epoch=3, now=T0, resync=RESYNC) == {POOL}


def test_worker_deadline_is_the_earliest_online_heartbeat_expiry() -> None:
    deadline = freshness.worker_deadline([
        ("ONLINE", T0, 30.0), ("ONLINE", T0 + timedelta(seconds=10), 2.0), ("OFFLINE", T0 - timedelta(hours=1), 1.0),
    ])
    assert deadline == T0 + timedelta(seconds=16)
    assert freshness.worker_deadline([("ONLINE", T0, None)]) == T0 + timedelta(seconds=90)
    assert freshness.worker_deadline([("OFFLINE", T0, None)]) is None
    assert freshness.worker_deadline([("ONLINE", None, 30.0)]) < T0  # no heartbeat time: read again


def test_events_touch_the_parts_of_the_pools_they_name() -> None:
    run = {"event": "prefect.flow-run.Pending", "resource": {"prefect.resource.id": "prefect.flow-run.1"},
           "related": [{"prefect.resource.id": "prefect.work-pool.9", "prefect.resource.role": "work-pool",
                        "prefect.resource.name": "p"}]}
    assert freshness.event_effects(run) == {"p": {COUNTS}}
    pool = {"event": "prefect.work-pool.not-ready", "resource": {"prefect.resource.name": "p"}}
    assert freshness.event_effects(pool) == {"p": {POOL, WORKERS}}
    started = {**run, "event": "prefect.worker.started"}
    assert freshness.event_effects(started) == {"p": {WORKERS}}
    claim = {**run, "event": "prefect.worker.submitted-flow-run"}
    assert freshness.event_effects(claim) == {}
    assert freshness.event_effects({"event": "prefect.flow-run.Running", "related": "junk"}) == {}


def _all_read(started: datetime = T0, epoch: int = 3) -> Freshness:
    state = Freshness()
    for part in PARTS:
        state = freshness.read_done(state, part, started=started, epoch=epoch)
    return state


def test_a_deployment_change_is_read_now_and_again_at_each_scheduler_recheck() -> None:
    state = _all_read()
    event_at = T0 + timedelta(seconds=10)
    rechecks = frozenset(event_at + d for d in freshness.SCHEDULER_RECHECKS)
    state = freshness.touched(state, frozenset({COUNTS}), recheck_at=rechecks)
    assert freshness.needed(state, epoch=3, now=event_at, resync=RESYNC) == {COUNTS}
    state = freshness.read_done(freshness.reading(state, frozenset({COUNTS})), COUNTS, started=event_at, epoch=3)
    assert freshness.needed(state, epoch=3, now=event_at + timedelta(seconds=5), resync=RESYNC) == frozenset()
    for delay in freshness.SCHEDULER_RECHECKS:
        at = event_at + delay
        assert freshness.needed(state, epoch=3, now=at - timedelta(seconds=1), resync=RESYNC) == frozenset()
        assert freshness.needed(state, epoch=3, now=at, resync=RESYNC) == {COUNTS}
        state = freshness.read_done(freshness.reading(state, frozenset({COUNTS})), COUNTS, started=at, epoch=3)
    assert freshness.needed(state, epoch=3, now=event_at + timedelta(seconds=200), resync=RESYNC) == frozenset()
    # A later event adds its rechecks to those still due; a failed read keeps them.
    late = event_at + timedelta(seconds=100)
    again = freshness.touched(state, frozenset({COUNTS}), recheck_at=frozenset({late + timedelta(seconds=10)}))
    again = freshness.touched(again, frozenset({COUNTS}), recheck_at=frozenset({late + timedelta(seconds=5)}))
    again = freshness.read_failed(freshness.reading(again, frozenset({COUNTS})), frozenset({COUNTS}))
    assert COUNTS in freshness.needed(again, epoch=3, now=late, resync=RESYNC)
    again = freshness.read_done(freshness.reading(again, frozenset({COUNTS})), COUNTS, started=late, epoch=3)
    assert freshness.needed(again, epoch=3, now=late + timedelta(seconds=5), resync=RESYNC) == {COUNTS}


def test_deployment_events_make_their_pools_counts_dirty_with_a_recheck() -> None:
    event = {"event": "prefect.deployment.created", "resource": {"prefect.resource.id": "prefect.deployment.1"},
             "related": [{"prefect.resource.role": "work-pool", "prefect.resource.name": "p"},
                         {"prefect.resource.role": "flow", "prefect.resource.name": "f"}]}
    assert freshness.event_effects(event) == {"p": frozenset({COUNTS})}
    assert freshness.recheck_after(event) == freshness.SCHEDULER_RECHECKS
    assert freshness.recheck_after({"event": "prefect.flow-run.Pending"}) == ()


starts = st.lists(st.integers(1, 3600), max_size=30).map(
    lambda xs: tuple(T0 + timedelta(seconds=x) for x in sorted(xs)))


@settings(max_examples=300, deadline=None)
@given(starts, st.integers(1, 1800), st.integers(0, 4000), st.integers(0, 3600))
def test_the_lookahead_counted_from_the_cached_list_is_the_true_count(
        runs: tuple[datetime, ...], lookahead_s: int, elapsed_s: int, cover_s: int) -> None:
    """The list holds every run up to ``complete_until``; while the window stays inside it the
    local count is exactly Prefect's count, and it never answers past it."""
    lookahead, complete = timedelta(seconds=lookahead_s), T0 + timedelta(seconds=cover_s)
    cached = freshness.Upcoming(tuple(t for t in runs if t <= complete), complete)
    now = T0 + timedelta(seconds=elapsed_s)
    count = freshness.upcoming_count(cached, now, lookahead)
    if now + lookahead > complete:
        assert count is None
    else:
        assert count == sum(1 for t in runs if now < t <= now + lookahead)
    expiry = freshness.counts_expiry(cached, lookahead)
    # The counts are read again no later than the first run becoming due or the window outrunning the list.
    assert expiry is not None and expiry <= complete - lookahead
    if cached.starts:
        assert expiry <= cached.starts[0]
    assert freshness.upcoming_count(freshness.Upcoming(runs[:1], None), now, lookahead) is None


def test_claimers_confirmed_by_workers_just_read() -> None:
    """Only the ONLINE/OFFLINE verdicts follow the workers read; stops and restarts (events) stay."""
    from prefect_workpool_operator.core.stale import Claimer

    claimers = {"back": Claimer.OFFLINE, "gone": Claimer.OFFLINE, "new": Claimer.OFFLINE,
                "stopped": Claimer.STOPPED, "none": Claimer.UNKNOWN, "left": Claimer.ONLINE}
    claimer_of = {"back": "w-1", "gone": "w-old", "new": "w-2", "stopped": "w-1", "none": None, "left": "w-3"}
    assert freshness.confirmed_claimers(claimers, claimer_of, frozenset({"w-1", "w-2"})) == {
        "back": Claimer.ONLINE, "gone": Claimer.OFFLINE, "new": Claimer.ONLINE,
        "stopped": Claimer.STOPPED, "none": Claimer.UNKNOWN, "left": Claimer.OFFLINE}


def test_a_part_served_from_the_cache_was_not_read_by_this_cycle() -> None:
    state = _all_read()
    assert freshness.read_at(state, WORKERS, T0)
    assert not freshness.read_at(state, WORKERS, T0 + timedelta(seconds=30))
