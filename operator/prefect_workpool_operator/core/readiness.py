"""Whether this replica is ready (``/readyz``), from plain facts (handlers/probes.py gathers them).

Ready means: logged in to the API server, and — with leader election on — this replica
reached its shard's Lease (a successful read or write) within the lease duration. A
standby that reaches the Lease is ready like the leader: a leader-only readiness would
stall rollouts (docs/design.md, "More than one replica").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Facts:
    now: float  # monotonic seconds
    started: float  # when the process started (monotonic)
    login_error: str | None  # why our login handler failed last, None when it succeeded or never ran
    logged_in: bool  # our login handler has returned credentials
    election: bool  # leader election on (else no Lease to reach)
    lease_seconds: float
    lease_reached: float | None  # monotonic time of the last successful read or write of the Lease
    lease_problem: str | None  # the last Lease try's failure ("HTTP 401", "TimeoutError"...), None when it succeeded
    lease_status: int | None  # its HTTP status when the API server answered one


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str


def decide(f: Facts) -> Verdict:
    if f.login_error is not None:
        return Verdict(False, f"login failed: {f.login_error}")
    if not f.logged_in:
        return Verdict(False, f"not logged in yet ({f.now - f.started:.0f} s since start)")
    if f.lease_status == 401:
        # The credentials loaded, but the API server refuses them (a bad or expired token).
        return Verdict(False, "login failed: the API server refused the credentials (HTTP 401)")
    if not f.election:
        return Verdict(True, "logged in (no leader election)")
    if f.lease_reached is not None and f.now - f.lease_reached <= f.lease_seconds:
        return Verdict(True, "Lease reached")
    since = f.lease_reached if f.lease_reached is not None else f.started
    problem = f": {f.lease_problem}" if f.lease_problem else ""
    if f.lease_reached is None and f.lease_problem is None:
        return Verdict(False, f"Lease not reached yet ({f.now - since:.0f} s since start)")
    return Verdict(False, f"Lease unreachable for {f.now - since:.0f} s{problem}")
