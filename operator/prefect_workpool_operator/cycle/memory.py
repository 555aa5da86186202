"""What a policy's cycle keeps between cycles, in memory: observe reads it, act records its writes in it.

Neither side's module: the write side (``act*``) must not import the read side
(``observe*``, ``recovery``). Not core: ``RecoveryMemory`` holds the Prefect adapter's claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prefect_workpool_operator.core import aws_scaling, stale
from prefect_workpool_operator.core.claim_memory import ClaimMemory
from prefect_workpool_operator.core.stale_plan import Observations
from prefect_workpool_operator.prefect.events import Claim


@dataclass
class RequeueMemory:
    """Requeues this process made, for the seconds before their events are visible.

    Entries older than ``keep`` are dropped: by then the events answer for them, and
    a long-running operator must not grow with every run it ever requeued.
    """

    counts: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    keep: timedelta = timedelta(minutes=10)

    def record(self, run_id: str, count: int, now: datetime) -> None:
        self.counts[run_id] = (count, now)

    def merged(self, from_events: dict[str, int], now: datetime) -> dict[str, int]:
        self.counts = {k: v for k, v in self.counts.items() if now - v[1] < self.keep}
        return {**from_events, **{k: max(n, from_events.get(k, 0)) for k, (n, _) in self.counts.items()}}


@dataclass
class RecoveryMemory:
    """What recovery keeps between a policy's cycles, in memory only."""

    requeues: RequeueMemory = field(default_factory=RequeueMemory)
    observations: Observations = field(default_factory=Observations)
    # id -> (pending_since, requeues): a run's count changes only by a requeue, which
    # gives it a new PENDING state, so it is read once per PENDING state.
    requeue_counts: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    # Claims found, per PENDING state (core.claim_memory): read when a run is first seen
    # recoverable, so the acting cycle reads only those not found yet.
    claims: ClaimMemory[Claim] = field(default_factory=ClaimMemory)
    # The PENDING runs not stale when listed: later cycles leave them out until their threshold.
    quiet: stale.QuietPending = field(default_factory=stale.QuietPending)
    # PrefectClient.counts_version at the last listing of every PENDING run not remembered.
    quiet_version: int | None = None
    # Requeues of the pool counted from Prefect once (first cycle after a start), then
    # advanced by this process's own: the events of a requeue show up seconds later.
    total_requeued: int | None = None


@dataclass
class AutoscalingCache:
    """Kept between cycles: what AWS last showed (or act last wrote), and ownership."""

    owner: str = ""  # <namespace>/<name> of the PrefectWorkPoolPolicy
    restored: bool = False
    managed: bool = False  # resources of ours may exist (from the last status, or created since)
    owns_target: bool = False
    key: str | None = None  # digest of the inputs the cache was read for
    target: aws_scaling.Target | None = None
    policies: tuple[aws_scaling.Policy, ...] | None = None
    alarms: tuple[aws_scaling.Alarm, ...] | None = None
    activity: str | None = None
    activity_unsupported: bool = False  # the endpoint failed DescribeScalingActivities: stop asking
    turn: int = 0
    resource_id: str = ""
    target_removed: bool = False  # act deregistered our target: DesiredCount looks again at once

    def restore(self, owner: str, status: dict[str, Any] | None) -> None:
        """Ownership survives restarts through the policy's status."""
        self.owner = owner
        if self.restored:
            return
        self.restored = True
        figures = ((status or {}).get("scaling") or {}).get("autoscaling")
        if figures:
            self.managed = True
            self.owns_target = bool(figures.get("ownedTarget"))

    @property
    def prefix(self) -> str:
        namespace, _, name = self.owner.partition("/")
        return aws_scaling.name_prefix(namespace or "default", name or "policy")

    def forget_reads(self) -> None:
        self.key, self.target, self.policies, self.alarms = None, None, None, None

    def reading(self) -> aws_scaling.Reading:
        return aws_scaling.Reading(self.prefix, self.owner, aws_scaling.Observed(self.target, self.policies, self.alarms),
                                   self.owns_target, self.managed, self.activity, self.resource_id)
