"""core.claim_memory: a claim is used only for the PENDING state it was read in; absence is never kept."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from prefect_workpool_operator.core.claim_memory import ClaimMemory
from prefect_workpool_operator.core.stale import PendingRun

NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)

# A run: id, state id, PENDING age in minutes.
run_st = st.builds(lambda i, s, m: PendingRun(f"r{i}", NOW - timedelta(minutes=m), state_id=f"s{s}"),
                   st.integers(0, 6), st.integers(0, 3), st.integers(0, 3))
runs_st = st.lists(run_st, max_size=8, unique_by=lambda r: r.id)


@given(first=runs_st, found=st.sets(st.integers(0, 6)), second=runs_st)
def test_known_only_for_the_same_state_and_absence_read_again(first, found, second) -> None:
    memory: ClaimMemory[str] = ClaimMemory()
    claims = {r.id: f"claim-{r.id}-{r.state_id}" for r in first if int(r.id[1:]) in found}
    memory.record(first, claims)
    known, to_read = memory.known(second), memory.to_read(second)
    assert set(known) | {r.id for r in to_read} == {r.id for r in second}
    assert not set(known) & {r.id for r in to_read}
    before = {r.id: r for r in first}
    for run in second:
        earlier = before.get(run.id)
        if run.id in known:  # read before, found, in this very state
            assert earlier is not None and earlier.state_key == run.state_key and known[run.id] == claims[run.id]
        else:  # new, re-claimed (another state) or not found before: read again
            assert earlier is None or earlier.state_key != run.state_key or run.id not in claims


@given(first=runs_st, second=runs_st)
def test_memory_keeps_only_the_listed_runs_in_their_current_state(first, second) -> None:
    memory: ClaimMemory[str] = ClaimMemory()
    memory.record(first, {r.id: "c" for r in first})
    memory.keep_only(second)
    listed = {r.id: r.state_key for r in second}
    assert len(memory.entries) <= len(second)
    assert all(listed.get(k) == key for k, (key, _) in memory.entries.items())
    assert set(memory.known(second)) == set(memory.entries)


def test_a_reclaim_with_the_same_timestamp_is_still_another_state() -> None:
    memory: ClaimMemory[str] = ClaimMemory()
    memory.record([PendingRun("r", NOW, state_id="a")], {"r": "old worker"})
    assert memory.known([PendingRun("r", NOW, state_id="b")]) == {}
    assert memory.known([PendingRun("r", NOW, state_id="a")]) == {"r": "old worker"}
