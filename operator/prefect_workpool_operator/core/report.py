"""What of a cycle's status is worth a PATCH: only what a user can see changed.

Writing the status every cycle costs one Kubernetes request per policy and cycle and
wakes every watcher of the object (Argo CD, kubectl get -w) for nothing. So a status
key is written when its value changed; ``lastReconcileTime`` rides along with any
change and is otherwise refreshed as a heartbeat, at most every few minutes. Health
(the Argo CD check) reads conditions and generations only, never the heartbeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

HEARTBEAT_KEY = "lastReconcileTime"


def status_changes(
    current: Mapping[str, Any] | None, wanted: dict[str, Any], now: datetime, heartbeat_seconds: float
) -> dict[str, Any]:
    """The status keys to PATCH: those whose value changed, and ``lastReconcileTime`` with them
    or when it is older than the heartbeat. Nothing when a user would see no difference."""
    current = dict(current or {})
    changes = {k: v for k, v in wanted.items() if k != HEARTBEAT_KEY and current.get(k) != v}
    last = current.get(HEARTBEAT_KEY)
    stale = True
    if isinstance(last, str):
        try:
            stale = (now - datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds() >= heartbeat_seconds
        except ValueError:
            stale = True
    if (changes or stale) and HEARTBEAT_KEY in wanted:
        changes[HEARTBEAT_KEY] = wanted[HEARTBEAT_KEY]
    return changes
