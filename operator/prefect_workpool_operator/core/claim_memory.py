"""Claims remembered per PENDING state, so the acting cycle reads none again.

A run's claim (the worker event that put it into its PENDING state) cannot change
while the run stays in that state: the server refuses PENDING -> PENDING, so a new
claim means a new state id. A claim found when a run is first seen recoverable is
kept under (run id, state key) and used by later readings of the same state; a claim
not found is not kept (its event may still become visible), so it is read again. The claim's
"task reported" flag can still turn true; where it decides, recovery forgets and re-reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

from prefect_workpool_operator.core.stale import PendingRun

C = TypeVar("C")


@dataclass
class ClaimMemory(Generic[C]):
    entries: dict[str, tuple[Hashable, C]] = field(default_factory=dict)

    def known(self, runs: list[PendingRun]) -> dict[str, C]:
        """The remembered claims of these runs' current PENDING states."""
        out: dict[str, C] = {}
        for run in runs:
            entry = self.entries.get(run.id)
            if entry is not None and entry[0] == run.state_key:
                out[run.id] = entry[1]
        return out

    def to_read(self, runs: list[PendingRun]) -> list[PendingRun]:
        known = self.known(runs)
        return [r for r in runs if r.id not in known]

    def record(self, runs: list[PendingRun], found: dict[str, C]) -> None:
        """Claims read for ``runs``; a run without one is not remembered (absence is not final)."""
        self.entries.update((r.id, (r.state_key, found[r.id])) for r in runs if r.id in found)

    def forget(self, runs: list[PendingRun]) -> None:
        for r in runs:
            self.entries.pop(r.id, None)

    def keep_only(self, runs: list[PendingRun]) -> None:
        """Bounded by the runs listed now: a run not listed, or in another state, is dropped."""
        current = {r.id: r.state_key for r in runs}
        self.entries = {k: v for k, v in self.entries.items() if current.get(k) == v[0]}
