"""Pure rules for bad input, table by table: Secret values, template values, pool types, claims, log gate."""

from __future__ import annotations

import pytest

from prefect_workpool_operator.core.claims import Claimant, claim_keys, rival_for
from prefect_workpool_operator.core.conditions import Condition, unobserved
from prefect_workpool_operator.core.log_gate import LogGate
from prefect_workpool_operator.core.job_template import applied_condition, plan_template, template_condition
from prefect_workpool_operator.core.pool_types import features_for, pool_type_condition
from prefect_workpool_operator.core.secret_values import SecretValueError, Use, check_secret, decode_secret
from prefect_workpool_operator.core.template_values import value_problem
from sandbox.prefect_seed import default_ecs_base_job_template

SECRET = "pnu_s3cr3tvalue"

# (case, raw bytes, use, fragment of the problem or None when accepted)
SECRET_CASES = [
    ("trailing newline from echo is stripped", b"pnu_s3cr3tvalue\n", Use.API_KEY, None),
    ("surrounding spaces are stripped", b"  pnu_s3cr3tvalue  ", Use.API_KEY, None),
    ("not UTF-8", b"pnu_\xff\xfes3cr3t", Use.API_KEY, "not UTF-8 text (invalid byte at position 4)"),
    ("non-ASCII", "pnu_s3cr\u00e9t".encode(), Use.API_KEY, "non-ASCII character at position 8"),
    ("inner CR", b"pnu_s3\rcr3t", Use.API_KEY, "carriage return (CR) at position 6"),
    ("inner LF", b"pnu_s3\ncr3t", Use.API_KEY, "line feed (LF) at position 6"),
    ("inner NUL", b"pnu_s3\x00cr3t", Use.API_KEY, "NUL byte at position 6"),
    ("other control char", b"pnu_s3\x1bcr3t", Use.API_KEY, "control character U+001B"),
    ("DEL", b"pnu_s3\x7fcr3t", Use.API_KEY, "control character U+007F"),
    ("empty", b"", Use.API_KEY, "is empty"),
    ("only whitespace", b" \n\t ", Use.API_KEY, "is empty"),
    ("space inside an API key", b"pnu_s3 cr3t", Use.API_KEY, "contains a space at position 6"),
    ("basic auth without colon", b"operators3cr3t", Use.BASIC_AUTH, "must hold 'user:password'"),
    ("basic auth with a space in the password", b"operator:s3 cr3t", Use.BASIC_AUTH, None),
    ("basic auth with CRLF", b"operator:s3cr3t\r\nX-Injected: 1", Use.BASIC_AUTH, "carriage return"),
    ("AWS key id with a tab", b"AKIA\tEXAMPLE", Use.AWS_ACCESS_KEY_ID, "a tab at position 4"),
    ("AWS secret non-ASCII", "wJalr\u2028XUtn".encode(), Use.AWS_SECRET_ACCESS_KEY, "non-ASCII"),
    ("AWS session token fine", b"FwoGZXIvYXdzEJr//////////wEaDK", Use.AWS_SESSION_TOKEN, None),
]


@pytest.mark.parametrize(("case", "raw", "use", "fragment"), SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_secret_values(case: str, raw: bytes, use: Use, fragment: str | None) -> None:
    try:
        value = check_secret(decode_secret(raw), use)
    except SecretValueError as exc:
        assert fragment is not None, f"{case}: refused: {exc}"
        assert fragment in str(exc)
        for part in ("s3cr3t", "pnu_", "wJalr", "EXAMPLE", "operator"):
            assert part not in str(exc), f"{case}: the message quotes the value"
    else:
        assert fragment is None, f"{case}: accepted"
        assert value == value.strip() and value


TEMPLATE = default_ecs_base_job_template()
TEMPLATE["variables"]["properties"].update({
    "retries": {"type": "integer", "minimum": 0, "maximum": 10, "exclusiveMaximum": 10},
    "ratio": {"type": "number", "exclusiveMinimum": 0},
    "tag": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
    "vpc": {"anyOf": [{"$ref": "#/definitions/VpcId"}, {"type": "null"}]},
    "when": {"type": "string", "format": "date-time"},
})
TEMPLATE["variables"]["definitions"] = {"VpcId": {"type": "string", "pattern": "^vpc-[0-9a-f]+$"}}

# (case, variable, value, fragment of the problem or None when valid)
TEMPLATE_CASES = [
    ("string for an integer", "task_start_timeout_seconds", "ten minutes", "type"),
    ("1e30 for an integer", "task_start_timeout_seconds", 1e30, "is a float"),
    ("600.0 for an integer", "task_start_timeout_seconds", 600.0, "is a float"),
    ("beyond int64", "task_start_timeout_seconds", 2**70, "64 bits"),
    ("bool for an integer", "task_start_timeout_seconds", True, "type"),
    ("integer ok", "task_start_timeout_seconds", 600, None),
    ("number accepts a float", "task_watch_poll_interval", 2.5, None),
    ("enum", "launch_type", "LAMBDA", "enum"),
    ("enum ok", "launch_type", "EC2", None),
    ("minimum", "retries", -1, "minimum"),
    ("exclusiveMaximum", "retries", 10, "exclusiveMaximum"),
    ("exclusiveMinimum", "ratio", 0, "exclusiveMinimum"),
    ("minLength", "tag", "a", "minLength"),
    ("maxLength", "tag", "abcdef", "maxLength"),
    ("pattern", "tag", "AB", "pattern"),
    ("anyOf with $ref", "vpc", "subnet-1", "anyOf"),
    ("anyOf with $ref ok", "vpc", "vpc-0abc", None),
    ("anyOf null ok", "vpc", None, None),
    ("format date-time", "when", "yesterday", "format"),
    ("boolean for a boolean", "match_latest_revision_in_family", True, None),
    ("string for a boolean", "match_latest_revision_in_family", "true", "type"),
    ("object for a string", "cluster", {"name": "x"}, "type"),
]


@pytest.mark.parametrize(("case", "name", "value", "fragment"), TEMPLATE_CASES, ids=[c[0] for c in TEMPLATE_CASES])
def test_template_values(case: str, name: str, value: object, fragment: str | None) -> None:
    problem = value_problem(TEMPLATE["variables"], name, value)
    if fragment is None:
        assert problem is None, f"{case}: {problem}"
    else:
        assert problem is not None and fragment in problem, f"{case}: {problem}"


def test_an_invalid_value_holds_back_the_whole_write() -> None:
    plan = plan_template(TEMPLATE, {"task_start_timeout_seconds": "ten minutes", "match_latest_revision_in_family": True})
    assert not plan.writable and not plan.in_sync
    condition = template_condition(plan, pool="p", dry_run=False, declared=2)
    assert (condition.status, condition.reason) == ("False", "InvalidValue")
    assert "task_start_timeout_seconds: type" in condition.message and "nothing was written" in condition.message


def test_in_sync_only_when_the_reread_template_holds_the_value() -> None:
    plan = plan_template(TEMPLATE, {"task_start_timeout_seconds": 900})
    assert plan.writable
    assert applied_condition(plan, plan.template, pool="p") is None
    lost = applied_condition(plan, TEMPLATE, pool="p")
    assert lost is not None and (lost.status, lost.reason) == ("False", "NotApplied")


def test_true_is_not_one() -> None:
    template = {"variables": {"properties": {"flag": {"type": "boolean", "default": 1}}}}
    assert plan_template(template, {"flag": True}).drift == {"flag": (1, True)}


# (pool type, ecs features, recovery)
POOL_TYPES = [
    ("ecs", True, True), (None, True, True), ("process", False, True), ("kubernetes", False, True),
    ("docker", False, True), ("ecs:push", False, False), ("cloud-run:push", False, False),
    ("prefect:managed", False, False),
]


@pytest.mark.parametrize(("pool_type", "ecs", "recovery"), POOL_TYPES)
def test_pool_types(pool_type: str | None, ecs: bool, recovery: bool) -> None:
    features = features_for(pool_type)
    assert (features.ecs, features.recovery) == (ecs, recovery)
    condition = pool_type_condition(features, pool="p", stale_runs=True, ecs=True, scaling=True, job_template=True)
    assert condition.status == ("True" if ecs else "False")
    if not ecs:
        assert condition.reason == "UnsupportedPoolType" and "scaling" in condition.message
        assert ("staleRuns (claimer rule" in condition.message) == recovery


def test_conditions_not_reestablished_turn_unknown() -> None:
    previous = [{"type": "Ready", "status": "True"}, {"type": "AwsConnected", "status": "True"},
                {"type": "Scaling", "status": "True"}]
    current = [Condition("Ready", "False", "Unreachable", "down")]
    stale = unobserved(previous, current, {"Scaling"}, "Unreachable")
    assert [(c.type, c.status, c.reason) for c in stale] == [("AwsConnected", "Unknown", "NotChecked")]


# ---- two policies over one pool or service -------------------------------------------


OLD = Claimant("2026-01-01T00:00:00Z", "b", "old")
SAME_SECOND_A = Claimant("2026-01-02T00:00:00Z", "a", "x")
SAME_SECOND_B = Claimant("2026-01-02T00:00:00Z", "b", "x")


def test_the_oldest_claimant_wins_then_namespace_and_name() -> None:
    key = "work pool 'p' at http://h/api"
    assert rival_for(OLD, {key: [OLD, SAME_SECOND_A]}) is None
    rival = rival_for(SAME_SECOND_A, {key: [OLD, SAME_SECOND_A]})
    assert rival is not None and rival.winner == OLD
    assert rival_for(SAME_SECOND_A, {key: [SAME_SECOND_B]}) is None  # same second: namespace decides
    assert rival_for(SAME_SECOND_B, {key: [SAME_SECOND_A]}).winner == SAME_SECOND_A  # type: ignore[union-attr]


def test_claims_of_a_spec() -> None:
    base = {"prefect": {"apiUrl": "HTTP://Host:4200/api/", "workPool": "p"}}
    assert claim_keys(base) == claim_keys({"prefect": {"apiUrl": "http://host:4200/api", "workPool": "p"}})
    scaled = {**base, "ecs": {"region": "r", "cluster": "c", "service": "s"}, "scaling": {}}
    assert claim_keys(scaled)[1] == "ECS service r/c/s"
    assert len(claim_keys({**base, "ecs": {"region": "r", "cluster": "c", "service": "s"}})) == 1  # no scaling
    assert claim_keys({**scaled, "suspend": True}) == []
    assert claim_keys({"prefect": "garbage"}) == []


def test_log_gate_full_once_then_reminders() -> None:
    from datetime import datetime, timedelta, timezone

    gate, t0 = LogGate(), datetime(2026, 1, 1, tzinfo=timezone.utc)
    verdicts = [gate.decide("Unreachable", t0 + timedelta(seconds=30 * i)) for i in range(12)]
    assert verdicts[0] == "full" and verdicts.count("full") == 1
    assert verdicts.count("reminder") == 1 and verdicts[10] == "reminder"  # 300 s later
    assert gate.decide("Unauthorized", t0 + timedelta(seconds=400)) == "full"  # a different error is news
    gate.clear()
    assert gate.decide("Unauthorized", t0 + timedelta(seconds=430)) == "full"
