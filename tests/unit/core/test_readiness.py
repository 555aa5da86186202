"""/readyz's decision (core.readiness) on plain facts."""

from __future__ import annotations

import dataclasses

from prefect_workpool_operator.core.readiness import Facts, decide

BASE = Facts(now=100.0, started=0.0, login_error=None, logged_in=True, election=True, lease_seconds=15.0,
             lease_reached=95.0, lease_problem=None, lease_status=None)


def facts(**changes: object) -> Facts:
    return dataclasses.replace(BASE, **changes)


def test_logged_in_and_lease_reached_recently_is_ready() -> None:
    verdict = decide(BASE)
    assert verdict.ready and verdict.reason == "Lease reached"


def test_lease_reached_exactly_one_lease_ago_is_still_ready_and_later_is_not() -> None:
    assert decide(facts(lease_reached=85.0)).ready
    late = decide(facts(lease_reached=84.0, lease_problem="TimeoutError"))
    assert not late.ready
    assert late.reason == "Lease unreachable for 16 s: TimeoutError"


def test_login_handler_failure_says_login() -> None:
    verdict = decide(facts(login_error="no credentials (ConfigException: Service host/port is not set.)",
                           logged_in=False, lease_reached=None))
    assert not verdict.ready
    assert verdict.reason.startswith("login failed: no credentials")


def test_refused_credentials_say_login_even_after_an_earlier_reach() -> None:
    verdict = decide(facts(lease_problem="HTTP 401 Unauthorized", lease_status=401))
    assert not verdict.ready and verdict.reason.startswith("login failed") and "401" in verdict.reason


def test_before_login_and_before_the_first_reach_not_ready() -> None:
    assert decide(facts(logged_in=False, lease_reached=None)).reason == "not logged in yet (100 s since start)"
    assert decide(facts(lease_reached=None)).reason == "Lease not reached yet (100 s since start)"


def test_never_reached_with_a_problem_counts_from_start() -> None:
    verdict = decide(facts(now=20.0, lease_reached=None, lease_problem="HTTP 403 Forbidden", lease_status=403))
    assert not verdict.ready and verdict.reason == "Lease unreachable for 20 s: HTTP 403 Forbidden"


def test_a_recent_reach_wins_over_an_older_failure_cleared_by_it() -> None:
    # The elector clears the problem on success: a standby that reads the Lease is ready.
    assert decide(facts(lease_reached=99.0)).ready


def test_without_leader_election_login_is_enough() -> None:
    assert decide(facts(election=False, lease_reached=None)).ready
    assert not decide(facts(election=False, logged_in=False, lease_reached=None)).ready
