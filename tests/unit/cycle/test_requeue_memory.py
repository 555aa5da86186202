from datetime import datetime, timedelta, timezone

from prefect_workpool_operator.cycle.memory import RequeueMemory

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_memory_covers_events_not_yet_visible_and_forgets_old_entries() -> None:
    memory = RequeueMemory()
    memory.record("a", 2, T0)
    assert memory.merged({"a": 1, "b": 3}, T0 + timedelta(seconds=5)) == {"a": 2, "b": 3}
    assert memory.merged({"a": 3}, T0 + timedelta(seconds=6)) == {"a": 3}  # events caught up and passed
    assert memory.merged({}, T0 + timedelta(minutes=11)) == {}
    assert memory.counts == {}
