"""From what one cycle saw (or why it saw nothing) to conditions and figures.

Reasons are part of the interface (Argo CD health, alerts and docs key on them), so
they live here as constants and never change spelling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect_workpool_operator.core.conditions import Condition

# Condition types
READY = "Ready"
PREFECT_CONNECTED = "PrefectConnected"
WORK_POOL_READY = "WorkPoolReady"

# Failure reasons, grouped by where the cycle stopped.
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
SECRET_UNREADABLE = "SecretUnreadable"
SECRET_INVALID = "SecretInvalid"  # the value cannot become a header or credential (never quoted)
CREDENTIAL_REASONS = {SECRET_NOT_FOUND, SECRET_KEY_NOT_FOUND, SECRET_UNREADABLE, SECRET_INVALID}

UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
UNREACHABLE = "Unreachable"
INVALID_API_URL = "InvalidApiUrl"
NOT_PREFECT_API = "NotPrefectApi"  # something answered, but not a Prefect API (HTML, other JSON, login page)
SERVER_TOO_OLD = "ServerTooOld"
SERVER_ERROR = "ServerError"
RATE_LIMITED = "RateLimited"
BAD_RESPONSE = "BadResponse"

WORK_POOL_NOT_FOUND = "WorkPoolNotFound"
WORK_QUEUE_NOT_FOUND = "WorkQueueNotFound"
POOL_REASONS = {WORK_POOL_NOT_FOUND, WORK_QUEUE_NOT_FOUND}

# Success reasons
RECONCILED = "Reconciled"
SUSPENDED = "Suspended"
CONNECTED = "Connected"
NOT_CHECKED = "NotChecked"
POOL_STATUS_REASONS = {"READY": "PoolReady", "NOT_READY": "PoolNotReady", "PAUSED": "PoolPaused"}

MIN_SERVER_MAJOR = 3


@dataclass(frozen=True)
class PoolObservation:
    """What one cycle counted in Prefect for the pool (and its queues)."""

    pool_status: str
    workers_online: int
    workers_offline: int
    late: int
    pending: int
    running: int
    server_version: str | None = None
    online_workers: frozenset[str] = frozenset()
    base_job_template: dict[str, Any] | None = None
    pool_type: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why a cycle could not observe the pool; ``message`` never holds a secret."""

    reason: str
    message: str


def server_too_old(version: str | None) -> bool:
    """Only Prefect 3 speaks the API this operator uses; unknown versions (Cloud) pass."""
    if not version:
        return False
    head = version.lstrip("v").split(".", 1)[0]
    return head.isdigit() and int(head) < MIN_SERVER_MAJOR


def health_conditions(
    observation: PoolObservation | None, failure: Failure | None, *, pool: str, api_url: str
) -> list[Condition]:
    """Ready, PrefectConnected and WorkPoolReady for a cycle's outcome."""
    if failure is not None:
        return _failure_conditions(failure)
    if observation is None:
        raise ValueError("either an observation or a failure is required")
    version = f"Prefect {observation.server_version}" if observation.server_version else "Prefect"
    pool_reason = POOL_STATUS_REASONS.get(observation.pool_status, "PoolStatusUnknown")
    pool_ok = observation.pool_status == "READY"
    return [
        Condition(READY, "True", RECONCILED, f"Work pool {pool!r} observed; {_figures(observation)}."),
        Condition(PREFECT_CONNECTED, "True", CONNECTED, f"{version} at {api_url} answered."),
        Condition(
            WORK_POOL_READY,
            "True" if pool_ok else "False",
            pool_reason,
            f"Work pool {pool!r} is {observation.pool_status} with {observation.workers_online} worker(s) online.",
        ),
    ]


def suspended_conditions() -> list[Condition]:
    return [Condition(READY, "True", SUSPENDED, "spec.suspend is true: nothing is read from or written to Prefect or AWS.")]


def _failure_conditions(failure: Failure) -> list[Condition]:
    ready = Condition(READY, "False", failure.reason, failure.message)
    if failure.reason == INVALID_SPEC:
        return [ready, Condition(PREFECT_CONNECTED, "Unknown", NOT_CHECKED, "The spec is invalid; Prefect was not contacted.")]
    if failure.reason in CREDENTIAL_REASONS:
        return [ready, Condition(PREFECT_CONNECTED, "Unknown", NOT_CHECKED, "Credentials are unavailable; Prefect was not contacted.")]
    if failure.reason in POOL_REASONS:
        return [ready, Condition(PREFECT_CONNECTED, "True", CONNECTED, "The Prefect API answered."),
                Condition(WORK_POOL_READY, "False", failure.reason, failure.message)]
    return [ready, Condition(PREFECT_CONNECTED, "False", failure.reason, failure.message)]


def _figures(o: PoolObservation) -> str:
    return f"{o.late} late, {o.pending} pending, {o.running} running, {o.workers_online} worker(s) online"
