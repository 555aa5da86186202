"""``status.brief``: the policy in one line, first in ``kubectl describe``'s Status (pure).

What the policy does, what it did last, what is wrong and what to do — in that order.
Built from the spec and the status the cycle writes, so it changes only when one of
them does (no ages: a line that changed every cycle would cost a PATCH every cycle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect_workpool_operator.core import claims, health
from prefect_workpool_operator.core.conditions import Condition

MAX_LENGTH = 1024  # the CRD's maxLength for status.brief

# What to do about a failure, by reason (the condition's message says where).
TO_DO = {
    health.INVALID_SPEC: "fix the spec fields named in Ready's message",
    health.SECRET_NOT_FOUND: "create the Secret, or fix the policy's secretRef",
    health.SECRET_KEY_NOT_FOUND: "add the key to the Secret, or fix the secretRef's key",
    health.SECRET_UNREADABLE: "let the operator's ServiceAccount get the Secret (RBAC)",
    health.SECRET_INVALID: "fix the Secret's value at the position the message names",
    health.UNAUTHORIZED: "check the API key or basic-auth credentials in the Secret",
    health.FORBIDDEN: "give the credentials access to the work pool",
    health.UNREACHABLE: "check spec.prefect.apiUrl and the network from the operator to Prefect",
    health.INVALID_API_URL: "fix spec.prefect.apiUrl",
    health.NOT_PREFECT_API: "point spec.prefect.apiUrl at the Prefect API (…/api)",
    health.WORK_POOL_NOT_FOUND: "create the work pool, or fix spec.prefect.workPool",
    health.WORK_QUEUE_NOT_FOUND: "create the work queue, or fix spec.prefect.workQueues",
    claims.CONFLICT: "keep one policy per pool and ECS service: change or delete one of them",
    "PendingTimeoutBelowTaskStartTimeout": "raise staleRuns.pendingTimeout above the pool's task start timeout",
}
GENERIC_TO_DO = "see the condition's message and docs/conditions.md"


def summarize(spec: Any, conditions: Sequence[Condition], status: Mapping[str, Any]) -> str:
    """``spec``: the validated ``PolicySpec`` (None when invalid); ``conditions``: this
    cycle's, Ready first; ``status``: the figures as they will be written."""
    parts = [_does(spec)]
    last = _last(status)
    if last:
        parts.append(f"Last: {last}.")
    ready = conditions[0] if conditions else None
    if spec is not None and spec.suspend:
        parts.append("Suspended: does nothing until spec.suspend is false.")
    elif ready is not None and ready.status != "True":
        parts.append(f"Problem: {ready.reason}. To do: {TO_DO.get(ready.reason, GENERIC_TO_DO)}.")
    else:
        failing = [c for c in conditions[1:] if c.status == "False" and c.type != health.WORK_POOL_READY]
        if failing:
            worst = failing[0]
            parts.append(f"Attention: {worst.type} {worst.reason}. To do: {TO_DO.get(worst.reason, GENERIC_TO_DO)}.")
        else:
            parts.append("OK.")
    text = " ".join(parts)
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"


def _does(spec: Any) -> str:
    if spec is None:
        return "Does nothing: the spec is invalid."
    pool = f"work pool {spec.prefect.work_pool!r}"
    does = [f"Watches {pool}"]
    stale = spec.stale_runs
    if stale is not None:
        action = stale.action + (f" (at most {stale.max_requeues_per_run} times, then {stale.on_exhausted})"
                                 if stale.action == "Reschedule" else "")
        does.append(f"recovers runs PENDING over {stale.pending_timeout}: {action}")
    scaling = spec.scaling
    if scaling is not None and scaling.mode != "Disabled" and spec.ecs is not None:
        service = f" of ECS service {spec.ecs.service}" if spec.ecs.service else ""
        does.append(f"scales workers{service} between {scaling.min_workers} and {scaling.max_workers} "
                    f"({scaling.mode})")
    if spec.job_template is not None:
        does.append("keeps its job template's declared values")
    text = "; ".join(does) + f", every {spec.interval}"
    return text + (" (dryRun: reports, writes nothing)." if spec.dry_run else ".")


def _last(status: Mapping[str, Any]) -> str:
    done = []
    recovery = status.get("lastRecovery") or {}
    if recovery.get("time"):
        counts = [f"{verb} {recovery[key]}" for key, verb in
                  (("rescheduled", "rescheduled"), ("crashed", "marked Crashed"), ("cancelled", "cancelled"))
                  if recovery.get(key)]
        done.append(f"{', '.join(counts) or 'changed'} run(s) at {recovery['time']}")
    change = (status.get("scaling") or {}).get("lastChange") or {}
    if change.get("time"):
        done.append(f"desiredCount {change.get('from', '?')} → {change.get('to')} at {change['time']}")
    return "; ".join(done)

