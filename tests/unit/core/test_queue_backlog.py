"""Backlog per queue and its series, on plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings, strategies as st

from prefect_workpool_operator.core.queue_backlog import (
    BacklogRun, QueueCounts, QueueListing, backlog_series, group_by_queue, queue_sizes, scoped_backlog,
)
from prefect_workpool_operator.core.scaling import Backlog, backlog_size

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)


def test_runs_are_classified_like_the_pool_counts() -> None:
    runs = [BacklogRun("a", "SCHEDULED", NOW - timedelta(seconds=5)), BacklogRun("a", "SCHEDULED", NOW),
            BacklogRun("a", "SCHEDULED", NOW + timedelta(seconds=30)), BacklogRun("b", "PENDING", NOW),
            BacklogRun(None, "SCHEDULED", NOW), BacklogRun("b", "RUNNING", NOW)]
    grouped = group_by_queue(runs, NOW, known=["idle"])
    assert grouped == {"a": QueueCounts(late=2, upcoming=1), "b": QueueCounts(pending=1), "idle": QueueCounts()}
    assert queue_sizes(grouped, include_pending=False) == {"a": 3, "b": 0, "idle": 0}
    assert queue_sizes(grouped, include_pending=True) == {"a": 3, "b": 1, "idle": 0}


def test_scoped_backlog_sums_the_named_queues_only() -> None:
    grouped = {"a": QueueCounts(late=2, upcoming=1), "b": QueueCounts(late=7)}
    assert scoped_backlog(grouped, ["a", "missing"], 3) == Backlog(late=2, pending=0, workers_online=3, upcoming=1)


def test_series_pool_first_then_queues_in_order() -> None:
    series = backlog_series("p", 4, {"z": 1, "a": 3})
    assert [(s.dimensions, s.value) for s in series] == [
        ((("WorkPool", "p"),), 4), ((("WorkPool", "p"), ("WorkQueue", "a")), 3),
        ((("WorkPool", "p"), ("WorkQueue", "z")), 1)]
    assert len(backlog_series("p", 0, None)) == 1


runs_strategy = st.lists(st.builds(
    BacklogRun, st.sampled_from(["a", "b", "c"]), st.sampled_from(["SCHEDULED", "PENDING", "RUNNING"]),
    st.integers(-300, 300).map(lambda s: NOW + timedelta(seconds=s))), max_size=50)


@given(runs_strategy, st.booleans())
def test_queues_add_up_to_the_pool(runs: list[BacklogRun], include_pending: bool) -> None:
    grouped = group_by_queue(runs, NOW)
    pool = Backlog(late=sum(1 for r in runs if r.state_type == "SCHEDULED" and r.expected_start <= NOW),
                   pending=sum(1 for r in runs if r.state_type == "PENDING"), workers_online=0,
                   upcoming=sum(1 for r in runs if r.state_type == "SCHEDULED" and r.expected_start > NOW))
    assert sum(queue_sizes(grouped, include_pending).values()) == backlog_size(pool, include_pending)
    assert backlog_size(scoped_backlog(grouped, grouped, 0), include_pending) == backlog_size(pool, include_pending)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.sampled_from(["SCHEDULED", "PENDING"]),
                          st.integers(-600, 1200)), max_size=25),
       st.integers(0, 600), st.integers(0, 900))
def test_a_listing_regrouped_later_equals_a_fresh_listing(rows: list, lookahead_s: int, elapsed_s: int) -> None:
    """The per-queue listing, read once far enough ahead, regrouped by the clock, counts what a
    listing read at that moment would (no run changed in between: the event stream says so)."""
    t0 = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
    runs = [BacklogRun(q, s, t0 + timedelta(seconds=x)) for q, s, x in rows]
    lookahead, until = timedelta(seconds=lookahead_s), t0 + timedelta(seconds=900)
    listing = QueueListing(tuple(r for r in runs if r.expected_start < until), until)
    now = t0 + timedelta(seconds=elapsed_s)
    grouped = listing.grouped(now, lookahead, {"a"})
    if now + lookahead >= until:
        assert grouped is None
    else:
        fresh = [r for r in runs if r.expected_start <= now + lookahead]
        assert grouped == group_by_queue(fresh, now, {"a"})
