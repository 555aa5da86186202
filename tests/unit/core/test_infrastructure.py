"""What ECS's answers mean for a run (core.infrastructure), on plain answers as boto3 returns them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_workpool_operator.core import infrastructure
from prefect_workpool_operator.core.stale import Infrastructure, PendingRun

ARN = "arn:aws:ecs:us-east-1:123456789012:task/c/0123456789abcdef"
ALIVE, GONE, UNKNOWN, NONE_FOUND = (Infrastructure.ALIVE, Infrastructure.GONE, Infrastructure.UNKNOWN,
                                    Infrastructure.NONE_FOUND)


@pytest.mark.parametrize(("status", "state"), [
    ("PROVISIONING", ALIVE), ("RUNNING", ALIVE), ("DEACTIVATING", ALIVE), ("STOPPING", ALIVE),
    ("STOPPED", GONE), ("DELETED", GONE), ("SOMETHING_NEW", UNKNOWN), (None, UNKNOWN),
])
def test_liveness_of_a_status(status: str | None, state: Infrastructure) -> None:
    assert infrastructure.task_liveness(status) is state


def test_a_stopped_task_names_its_proof() -> None:
    answer = {"tasks": [{"taskArn": ARN, "lastStatus": "STOPPED", "stopCode": "EssentialContainerExited",
                         "stoppedReason": "x" * 300}]}
    reading = infrastructure.task_readings([ARN], answer)[ARN]
    assert reading.state is GONE
    assert "task 0123456789abcdef STOPPED" in reading.detail and "EssentialContainerExited" in reading.detail
    assert len(reading.detail) < 300  # the reason is clipped


def test_missing_is_gone_but_other_failures_say_nothing() -> None:
    other = ARN.replace("0123", "4567")
    answer = {"tasks": [], "failures": [{"arn": ARN, "reason": "MISSING"}, {"arn": other, "reason": "ACCESS"}]}
    readings = infrastructure.task_readings([ARN, other], answer)
    assert readings[ARN].state is GONE and readings[other].state is UNKNOWN


def test_pids_in_another_region_or_malformed_are_unknown() -> None:
    here = f"c::{ARN}"
    elsewhere = f"c::{ARN.replace('us-east-1', 'eu-west-1')}"
    by_cluster, answers = infrastructure.pids_by_cluster([here, elsewhere, "no-separator", "::"], "us-east-1")
    assert by_cluster == {"c": {ARN: [here]}}
    assert {pid: r.state for pid, r in answers.items()} == dict.fromkeys([elsewhere, "no-separator", "::"], UNKNOWN)


def test_runs_with_a_usable_pid_go_by_task_the_rest_by_tag() -> None:
    now = datetime(2026, 11, 30, tzinfo=timezone.utc)
    runs = [PendingRun("a", now, infrastructure_pid=f"c::{ARN}"), PendingRun("b", now, infrastructure_pid="odd"),
            PendingRun("c", now)]
    assert infrastructure.runs_by_pid(runs) == ({"a": f"c::{ARN}"}, {"b", "c"})


@given(statuses=st.lists(st.sampled_from(["RUNNING", "STOPPED", "NEW"]), max_size=5), complete=st.booleans())
def test_tag_scan(statuses: list[str], complete: bool) -> None:
    """A live tagged task → ALIVE whatever else; a stopped one proves nothing; nothing found
    counts as NONE_FOUND only when the scan saw every running task."""
    tasks = [{"lastStatus": s, "tags": [{"key": infrastructure.RUN_ID_TAG, "value": "r"}]} for s in statuses]
    readings = infrastructure.tag_scan_readings({"r", "other"}, tasks, complete=complete, detail="incomplete")
    if "RUNNING" in statuses:
        assert readings["r"].state is ALIVE
    elif "NEW" in statuses:
        assert readings["r"].state is UNKNOWN
    else:
        assert readings["r"] == readings["other"]
    assert readings["other"].state is (NONE_FOUND if complete else UNKNOWN)
