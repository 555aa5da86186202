"""How often a failing policy may repeat itself in the log.

A distinct failure is logged in full once; while it persists, at most a one-line
reminder every ``reminder`` interval; a different failure (or recovery, then failure
again) is news and is logged in full again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

REMINDER = timedelta(minutes=5)

Verdict = Literal["full", "reminder", "quiet"]


@dataclass
class LogGate:
    reminder: timedelta = REMINDER
    _key: str | None = None
    _last: datetime | None = None
    _repeats: int = 0

    def decide(self, key: str, now: datetime) -> Verdict:
        if key != self._key:
            self._key, self._last, self._repeats = key, now, 0
            return "full"
        self._repeats += 1
        if self._last is None or now - self._last >= self.reminder:
            self._last = now
            return "reminder"
        return "quiet"

    @property
    def repeats(self) -> int:
        """Cycles that failed the same way since the full log line."""
        return self._repeats

    def clear(self) -> None:
        """The failure is over: the next one is news."""
        self._key = self._last = None
        self._repeats = 0
