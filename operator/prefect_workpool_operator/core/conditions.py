"""Kubernetes-style conditions (metav1.Condition) as plain data.

The whole list is written back on every status patch (a merge patch replaces
lists), so merging must keep ``lastTransitionTime`` when a condition's status did
not change: that time answers "since when", which is what people look for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
NOT_CHECKED = "NotChecked"


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str


def merge_conditions(
    previous: list[dict[str, Any]] | None,
    current: list[Condition],
    now: datetime,
    generation: int | None,
    drop: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """The new conditions list; types not in ``current`` are kept as they were, except ``drop``."""
    by_type = {c.get("type"): c for c in (previous or []) if isinstance(c, dict) and c.get("type") not in drop}
    merged: list[dict[str, Any]] = []
    for cond in current:
        old = by_type.pop(cond.type, None)
        unchanged = old is not None and old.get("status") == cond.status
        transition = old.get("lastTransitionTime") if unchanged and old else None
        entry: dict[str, Any] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": transition or format_time(now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    merged.extend(by_type.values())
    return merged


def unobserved(
    previous: list[dict[str, Any]] | None, current: list[Condition], drop: set[str] | frozenset[str], why: str
) -> list[Condition]:
    """Previous conditions this cycle did not re-establish: their input is missing, so Unknown.

    A value kept from an earlier cycle would be a stale truth (AwsConnected=True while
    Prefect is down and AWS was never asked).
    """
    seen = {c.type for c in current} | set(drop)
    return [
        Condition(str(c["type"]), "Unknown", NOT_CHECKED, f"Not checked this cycle: {why}")
        for c in previous or []
        if isinstance(c, dict) and c.get("type") and c.get("type") not in seen
    ]


def changed_conditions(previous: list[dict[str, Any]] | None, current: list[Condition]) -> list[Condition]:
    """Conditions whose status or reason differ from before: these deserve an Event."""
    by_type = {c.get("type"): c for c in (previous or []) if isinstance(c, dict)}
    out = []
    for cond in current:
        old = by_type.get(cond.type)
        if old is None or old.get("status") != cond.status or old.get("reason") != cond.reason:
            out.append(cond)
    return out


def format_time(moment: datetime) -> str:
    """RFC 3339 with a Z and whole seconds, as Kubernetes writes times."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
