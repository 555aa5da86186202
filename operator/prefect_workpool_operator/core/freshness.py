"""When a cached Prefect read may be served, and when it must be read again.

The operator keeps the last answer of each part of a pool's observation and serves it
while Prefect's event stream says nothing about it, like a Kubernetes informer pairs
a watch with a periodic list. Some changes send no event, so each read also says when
its answer expires by itself:

- counts (late / pending / running): a SCHEDULED run becoming due sends nothing (the
  Late event comes 15 s later, and only for runs in a state named "Scheduled"), so the
  counts expire at the next expected start time the read saw;
- workers: the server turns a worker OFFLINE by a plain SQL update, without an event,
  once its heartbeat is older than 3 × its interval, so the workers expire at the
  earliest such deadline of an ONLINE worker (and stay expired while one is overdue).
  A worker back ONLINE by heartbeats alone, or a new one on a pool already READY, sends
  nothing either and cannot be foreseen; the one decision it changes is whether a stale
  run's claimer is alive, so a cycle about to judge a claimer OFFLINE on cached workers
  reads them first (``confirmed_claimers``); otherwise it shows at the next deadline or resync;
- scheduler-inserted runs: the scheduler service inserts SCHEDULED runs by SQL, without
  an event. Steady state inserts them ``min_scheduled_time`` (1 h) ahead, so the resync
  lists them long before they are due or within a lookahead; a created, changed or
  resumed deployment (an event naming the pool) has runs inserted within seconds (the
  recent-deployments scheduler, 5 s loop) or, if that one missed it, by the main
  scheduler's next loop (60 s), so its event makes the counts dirty now and again at
  each of ``SCHEDULER_RECHECKS`` later (a schedule edited alone sends no event: seen
  at the resync, or by the runs' Late events once due);
- the lookahead (SCHEDULED runs due within it): the counts read lists the expected
  start times up to the lookahead plus the resync, so the window moving with the clock
  is counted locally (``upcoming``); the list expires when the window's end passes what
  it covers;
- every part expires ``resync`` after it was read (a safety net, never the main path);
- a part read while the stream was down, or under another subscription than the one
  now live (the stream dropped in between: events may be lost), is never served.

Times are the cycle's clock; the subscription is an epoch number, so no clock of the
stream's enters here. Decided on plain data; the Prefect adapter does the reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from prefect_workpool_operator.core.stale import Claimer

POOL = "pool"  # status, type, base job template: GET /work_pools/{name}
WORKERS = "workers"  # workers/filter
COUNTS = "counts"  # late / pending / running counts and the next due time
PARTS = frozenset({POOL, WORKERS, COUNTS})

# prefect 3.8 foreman: OFFLINE when the last heartbeat is older than this many intervals,
# the interval being the worker's own or 30 s when it reported none.
INACTIVITY_HEARTBEAT_MULTIPLE = 3
FALLBACK_HEARTBEAT_SECONDS = 30.0
DEFAULT_RESYNC = timedelta(minutes=5)
# prefect 3.8 schedulers: recent deployments every 5 s (updated in the last 6 s), all every 60 s.
SCHEDULER_RECHECKS = (timedelta(seconds=10), timedelta(seconds=30), timedelta(seconds=65))


@dataclass(frozen=True)
class PartRead:
    """One part's last read: when it started and under which subscription."""

    started: datetime
    epoch: int | None  # the stream's subscription number at the read's start; None: stream down
    expires: datetime | None = None  # the next due time (counts) or worker deadline (workers)


@dataclass(frozen=True)
class Freshness:
    reads: dict[str, PartRead] = field(default_factory=dict)
    dirty: frozenset[str] = frozenset()  # parts an event touched since their read started
    # parts to read again once each of these times has come, if their last read started before it
    recheck: dict[str, frozenset[datetime]] = field(default_factory=dict)


def needed(state: Freshness, *, epoch: int | None, now: datetime, resync: timedelta = DEFAULT_RESYNC) -> frozenset[str]:
    """The parts this cycle must read; the others may be served from the cache."""
    out = set()
    for part in PARTS:
        read = state.reads.get(part)
        if (
            read is None
            or epoch is None  # the stream is down now: nothing tells us what changed
            or read.epoch != epoch  # read before this subscription: events in the gap are lost
            or part in state.dirty
            or now >= read.started + resync
            or (read.expires is not None and now >= read.expires)
            or any(read.started < t <= now for t in state.recheck.get(part, ()))
        ):
            out.add(part)
    return frozenset(out)


def reading(state: Freshness, parts: frozenset[str]) -> Freshness:
    """Reads of ``parts`` are about to start: events from now on dirty them again."""
    return replace(state, dirty=state.dirty - parts)


def read_done(
    state: Freshness, part: str, *, started: datetime, epoch: int | None, expires: datetime | None = None
) -> Freshness:
    recheck = dict(state.recheck)
    if part in recheck:
        recheck[part] = frozenset(t for t in recheck[part] if t > started)
    return replace(state, reads={**state.reads, part: PartRead(started, epoch, expires)}, recheck=recheck)


def read_failed(state: Freshness, parts: frozenset[str]) -> Freshness:
    """A failed read leaves nothing to serve: the next cycle reads again."""
    return Freshness({k: v for k, v in state.reads.items() if k not in parts}, state.dirty | parts, state.recheck)


def touched(state: Freshness, parts: frozenset[str], *, recheck_at: frozenset[datetime] = frozenset()) -> Freshness:
    """An event changed these parts (and may change them again, unannounced, by ``recheck_at``)."""
    recheck = state.recheck
    if recheck_at:
        recheck = {**recheck, **{p: recheck.get(p, frozenset()) | recheck_at for p in parts}}
    return replace(state, dirty=state.dirty | parts, recheck=recheck)


@dataclass(frozen=True)
class Upcoming:
    """Expected start times of the SCHEDULED runs not yet due, as one read listed them:
    every such run up to ``complete_until`` (None: only the first was asked for)."""

    starts: tuple[datetime, ...]
    complete_until: datetime | None

    @property
    def next_due(self) -> datetime | None:
        return self.starts[0] if self.starts else None


def upcoming_count(upcoming: Upcoming, now: datetime, lookahead: timedelta) -> int | None:
    """SCHEDULED runs with now < expected start <= now + lookahead, from the cached list;
    None when the list does not reach that far (read it again)."""
    if upcoming.complete_until is None or now + lookahead > upcoming.complete_until:
        return None
    return sum(1 for start in upcoming.starts if now < start <= now + lookahead)


def counts_expiry(upcoming: Upcoming, lookahead: timedelta) -> datetime | None:
    """When cached counts stop being true by the clock alone: the next run becomes due, or
    the lookahead window's end passes what the list covers."""
    times = [t for t in (upcoming.next_due,
                         upcoming.complete_until - lookahead if upcoming.complete_until and lookahead else None) if t]
    return min(times) if times else None


def upcoming_horizon(lookahead: timedelta, resync: timedelta) -> timedelta:
    """How far ahead the counts read lists SCHEDULED runs for a lookahead: far enough that the
    window never outruns the list before the resync reads it again."""
    return lookahead + resync


def read_at(state: Freshness, part: str, now: datetime) -> bool:
    """Whether ``part`` was read by the cycle of ``now`` (not served from the cache)."""
    read = state.reads.get(part)
    return read is not None and read.started == now and part not in state.dirty


def confirmed_claimers(claimers: Mapping[str, Claimer], claimer_of: Mapping[str, str | None],
                       online: frozenset[str]) -> dict[str, Claimer]:
    """Claimer statuses judged on cached workers, corrected by workers just read: only the
    ONLINE/OFFLINE verdicts depend on them (a stop or restart comes from the worker's events)."""
    fixed = dict(claimers)
    for run_id, status in claimers.items():
        if status in (Claimer.ONLINE, Claimer.OFFLINE):
            fixed[run_id] = Claimer.ONLINE if claimer_of.get(run_id) in online else Claimer.OFFLINE
    return fixed


def worker_deadline(workers: list[tuple[str, datetime | None, float | None]]) -> datetime | None:
    """The earliest time an ONLINE worker can be turned OFFLINE: (status, last heartbeat,
    heartbeat interval in seconds). An ONLINE worker without a heartbeat time expires at once."""
    deadlines = []
    for status, heartbeat, interval in workers:
        if status != "ONLINE":
            continue  # a worker coming back sends no event either: the resync sees it
        if heartbeat is None:
            return _EPOCH
        seconds = INACTIVITY_HEARTBEAT_MULTIPLE * (interval or FALLBACK_HEARTBEAT_SECONDS)
        deadlines.append(heartbeat + timedelta(seconds=seconds))
    return min(deadlines) if deadlines else None


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


FLOW_RUN_EVENTS = "prefect.flow-run."
POOL_EVENTS = "prefect.work-pool."
WORKER_EVENTS = ("prefect.worker.started", "prefect.worker.stopped")
DEPLOYMENT_EVENTS = "prefect.deployment."
STREAM_PREFIXES = (FLOW_RUN_EVENTS, POOL_EVENTS, "prefect.worker.", DEPLOYMENT_EVENTS)


def event_effects(event: dict[str, object]) -> dict[str, frozenset[str]]:
    """Pool name -> the parts of its observation one Prefect event changes.

    Run state changes name their pool as a related resource (role ``work-pool``); pool
    events are about the pool itself (a status change also means its workers changed);
    a worker's start and stop name the pool it polls; a deployment's creation, change or
    status names its pool (the scheduler inserts or deletes its runs by SQL, no event:
    see ``recheck_after``). Claims and other worker events change nothing observed here.
    """
    name = str(event.get("event") or "")
    resource = event.get("resource") if isinstance(event.get("resource"), dict) else {}
    related = [r for r in (event.get("related") or []) if isinstance(r, dict)]  # type: ignore[union-attr]
    related_pools = {str(r.get("prefect.resource.name")) for r in related
                     if r.get("prefect.resource.role") == "work-pool" and r.get("prefect.resource.name")}
    if name.startswith(FLOW_RUN_EVENTS):
        return dict.fromkeys(related_pools, frozenset({COUNTS}))
    if name.startswith(POOL_EVENTS):
        pool = resource.get("prefect.resource.name") if isinstance(resource, dict) else None
        return {str(pool): frozenset({POOL, WORKERS})} if pool else {}
    if name in WORKER_EVENTS:
        return dict.fromkeys(related_pools, frozenset({WORKERS}))
    if name.startswith(DEPLOYMENT_EVENTS):
        return dict.fromkeys(related_pools, frozenset({COUNTS}))
    return {}


def recheck_after(event: dict[str, object]) -> tuple[timedelta, ...]:
    """An event whose effects land later without an event of their own: a deployment's
    scheduled runs are inserted (or its old ones deleted) seconds after the change."""
    return SCHEDULER_RECHECKS if str(event.get("event") or "").startswith(DEPLOYMENT_EVENTS) else ()
