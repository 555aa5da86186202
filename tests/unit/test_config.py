"""Operator settings for replicas and shards (config.py): defaults, identity, shard rule."""

from __future__ import annotations

import pytest

from prefect_workpool_operator.config import in_shard, load_config


def test_lease_defaults_are_controller_runtimes() -> None:
    config = load_config({"POD_NAME": "op-0", "POD_NAMESPACE": "ops"})
    assert (config.lease_seconds, config.renew_deadline_seconds, config.retry_seconds) == (15, 10, 2)
    assert config.identity == "op-0" and config.lease_namespace == "ops"
    assert config.lease_name == "prefect-workpool-operator" and config.shard_name == "default"
    assert config.leader_election is True


def test_shard_names_its_lease_and_lease_namespace_overrides() -> None:
    config = load_config({"PWO_SHARD": "blue", "POD_NAMESPACE": "ops", "PWO_LEASE_NAMESPACE": "elsewhere"})
    assert config.lease_name == "prefect-workpool-operator-blue" and config.lease_namespace == "elsewhere"
    assert config.shard_name == "blue"
    assert load_config({"PWO_LEASE_NAME": "mine"}).lease_name == "mine"
    assert load_config({"PWO_LEADER_ELECTION": "0"}).leader_election is False


@pytest.mark.parametrize(("lease", "renew", "retry"), [("15", "15", "2"), ("10", "12", "2"), ("15", "10", "10"), ("15", "10", "0")])
def test_renew_deadline_must_be_shorter_than_the_lease(lease: str, renew: str, retry: str) -> None:
    env = {"PWO_LEASE_SECONDS": lease, "PWO_RENEW_DEADLINE_SECONDS": renew, "PWO_RETRY_SECONDS": retry}
    with pytest.raises(ValueError, match="PWO_RENEW_DEADLINE_SECONDS"):
        load_config(env)


@pytest.mark.parametrize(
    ("labels", "shard", "mine"),
    [
        ({}, "", True), (None, "", True), ({"prefectops.dev/shard": "default"}, "", True),
        ({"prefectops.dev/shard": "blue"}, "", False), ({}, "blue", False),
        ({"prefectops.dev/shard": "blue"}, "blue", True), ({"prefectops.dev/shard": "green"}, "blue", False),
        ({}, "default", True), ({"prefectops.dev/shard": "default"}, "default", True),
        ({"other": "x"}, "", True),
    ],
)
def test_shard_rule(labels: dict[str, str] | None, shard: str, mine: bool) -> None:
    assert in_shard(labels, shard) is mine


def test_secret_watch_mode_and_quiet_defaults() -> None:
    config = load_config({})
    assert config.secret_watch == "namespace"
    # 600 s heartbeat: at a 30 s interval, 0.05 status PATCHes per policy-cycle when nothing changes
    assert config.status_heartbeat_seconds == 600
    assert load_config({"PWO_SECRET_WATCH": "Name"}).secret_watch == "name"
    assert load_config({"PWO_SECRET_WATCH": "off"}).secret_watch == "off"
    with pytest.raises(ValueError, match="PWO_SECRET_WATCH"):
        load_config({"PWO_SECRET_WATCH": "cluster"})
def test_prefect_event_stream_is_on_by_default_with_a_five_minute_resync() -> None:
    config = load_config({})
    assert config.prefect_events is True and config.prefect_resync_seconds == 300
    off = load_config({"PWO_PREFECT_EVENTS": "0", "PWO_PREFECT_RESYNC_SECONDS": "60"})
    assert off.prefect_events is False and off.prefect_resync_seconds == 60
    with pytest.raises(ValueError, match="PWO_PREFECT_RESYNC_SECONDS"):
        load_config({"PWO_PREFECT_RESYNC_SECONDS": "-1"})


def test_cycle_turns_are_per_prefect_server_with_a_total_four_times_that_by_default() -> None:
    config = load_config({})
    assert (config.max_cycles_in_flight, config.max_cycles_in_flight_total) == (16, 64)
    assert load_config({"PWO_MAX_CYCLES_IN_FLIGHT": "5"}).max_cycles_in_flight_total == 20
    assert load_config({"PWO_MAX_CYCLES_IN_FLIGHT_TOTAL": "30"}).max_cycles_in_flight_total == 30
    with pytest.raises(ValueError, match="PWO_MAX_CYCLES_IN_FLIGHT_TOTAL"):
        load_config({"PWO_MAX_CYCLES_IN_FLIGHT_TOTAL": "0"})
