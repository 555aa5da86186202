"""core.summary: what the policy does, what it did last, what is wrong and what to do."""

from __future__ import annotations

from prefect_workpool_operator.core import health, summary
from prefect_workpool_operator.core.conditions import Condition
from prefect_workpool_operator.schema.models import PolicySpec

OK = [Condition("Ready", "True", "Reconciled", "ok")]


def spec(**extra: object) -> PolicySpec:
    return PolicySpec.model_validate({"prefect": {"apiUrl": "http://prefect/api", "workPool": "etl"}, **extra})


def test_what_it_does_in_spec_order() -> None:
    s = spec(staleRuns={"pendingTimeout": "15m"}, interval="30s",
             ecs={"region": "us-east-1", "cluster": "c", "service": "w"}, scaling={"minWorkers": 1, "maxWorkers": 4})
    text = summary.summarize(s, OK, {})
    assert text == ("Watches work pool 'etl'; recovers runs PENDING over 15m: Reschedule (at most 3 times, then "
                    "MarkCrashed); scales workers of ECS service w between 1 and 4 (DesiredCount), every 30s. OK.")


def test_last_recovery_and_scaling_no_ages() -> None:
    status = {"lastRecovery": {"time": "2026-11-30T10:00:00Z", "rescheduled": 4},
              "scaling": {"lastChange": {"time": "2026-11-30T10:01:00Z", "from": 1, "to": 3}}}
    text = summary.summarize(spec(), OK, status)
    assert "Last: rescheduled 4 run(s) at 2026-11-30T10:00:00Z; desiredCount 1 → 3 at 2026-11-30T10:01:00Z." in text


def test_a_failure_says_what_to_do() -> None:
    failed = [Condition("Ready", "False", health.SECRET_NOT_FOUND, "Secret ns/x does not exist")]
    text = summary.summarize(spec(), failed, {})
    assert text.endswith("Problem: SecretNotFound. To do: create the Secret, or fix the policy's secretRef.")
    assert "Secret ns/x" not in text  # the condition holds the details; the summary stays stable and short
    assert summary.summarize(None, [Condition("Ready", "False", health.INVALID_SPEC, "m")], {}).startswith(
        "Does nothing: the spec is invalid. Problem: InvalidSpec. To do: fix the spec fields")
    odd = summary.summarize(spec(), [Condition("Ready", "False", "SomethingNew", "m")], {})
    assert odd.endswith(f"To do: {summary.GENERIC_TO_DO}.")


def test_suspended_and_dry_run_and_feature_trouble() -> None:
    assert summary.summarize(spec(suspend=True), [Condition("Ready", "True", "Suspended", "")], {}).endswith(
        "Suspended: does nothing until spec.suspend is false.")
    assert "(dryRun: reports, writes nothing)." in summary.summarize(spec(dryRun=True), OK, {})
    trouble = OK + [Condition("WorkPoolReady", "False", "NotReady", ""), Condition("AwsConnected", "False", "Throttled", "")]
    assert summary.summarize(spec(), trouble, {}).endswith("Attention: AwsConnected Throttled. To do: "
                                                           f"{summary.GENERIC_TO_DO}.")


def test_bounded_length() -> None:
    long_pool = spec()
    status = {"lastRecovery": {"time": "t" * 2000, "rescheduled": 1}}
    assert len(summary.summarize(long_pool, OK, status)) == summary.MAX_LENGTH
