"""Property tests of the spec models: whatever the operator accepts round-trips and is a valid CRD object.

Specs are drawn from values near every boundary (valid and not): the operator may refuse
a spec the API server would take only where CEL says so (mirrored), never the reverse.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from prefect_workpool_operator.schema.crd import build_crd
from prefect_workpool_operator.schema.models import PolicySpec

SPEC_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

durations = st.sampled_from(["0s", "10s", "30s", "1m", "90s", "10m", "1h30m", "2h", "99999h", "100000h",
                             "9999999999h", "1.5h", "10", "", "500ms", "2m"])
urls = st.sampled_from(["http://127.0.0.1:4200/api", "https://api.prefect.cloud/api/accounts/a/workspaces/w",
                        "http://x/api?token=1", "http://x/api#f", "ftp://x/api", "https://u:p@x/api", "http://x"])
names = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=0, max_size=8)
counts = st.integers(min_value=-1, max_value=1001)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    prefect: dict[str, Any] = {"apiUrl": draw(urls), "workPool": draw(names)}
    if draw(st.booleans()):
        prefect["requestTimeout"] = draw(durations)
    if draw(st.booleans()):
        prefect["workQueues"] = draw(st.lists(names, max_size=3))
    if draw(st.booleans()):
        ref = {"name": draw(names), "key": draw(names)}
        prefect["auth"] = {draw(st.sampled_from(["apiKeySecretRef", "basicAuthSecretRef"])): ref}
    spec: dict[str, Any] = {"prefect": prefect}
    for key, value in (("interval", optional(durations)), ("suspend", optional(st.booleans())),
                       ("dryRun", optional(st.booleans()))):
        drawn = draw(value)
        if drawn is not None:
            spec[key] = drawn
    if draw(st.booleans()):
        spec["staleRuns"] = {k: v for k, v in {
            "pendingTimeout": draw(optional(durations)), "hardTimeout": draw(optional(durations)),
            "action": draw(optional(st.sampled_from(["Reschedule", "MarkCrashed", "Cancel", "ReportOnly", "Delete"]))),
            "maxRequeuesPerRun": draw(optional(counts)),
        }.items() if v is not None}
    if draw(st.booleans()):
        spec["ecs"] = {"region": draw(st.sampled_from(["us-east-1", "eu-west-3", "Mars"])), "cluster": "c",
                       **({"service": "s"} if draw(st.booleans()) else {}),
                       **({"endpointUrl": draw(urls)} if draw(st.booleans()) else {})}
    if draw(st.booleans()):
        spec["scaling"] = {k: v for k, v in {
            "mode": draw(optional(st.sampled_from(["DesiredCount", "CloudWatchMetric", "TargetTracking",
                                                   "StepScaling", "Disabled", "Off"]))),
            "minWorkers": draw(optional(counts)), "maxWorkers": draw(optional(counts)),
            "scaleDownCooldown": draw(optional(durations)), "lookahead": draw(optional(durations)),
            "workQueues": draw(optional(st.lists(st.sampled_from(["a", "b"]), max_size=2, unique=True))),
            "steps": draw(optional(st.lists(st.integers(1, 50), min_size=1, max_size=3, unique=True).map(
                lambda bounds: [{"atLeast": b, "add": 1} for b in sorted(bounds)]))),
        }.items() if v is not None}
    if draw(st.booleans()):
        spec["jobTemplate"] = {"variables": draw(st.dictionaries(
            st.sampled_from(["cpu", "memory", "task_start_timeout_seconds"]),
            st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5), st.booleans()),
            max_size=2))}
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_accepted_specs_round_trip_and_are_valid_crd_objects(spec: dict[str, Any]) -> None:
    try:
        model = PolicySpec.model_validate(spec)
    except ValidationError:
        return
    dumped = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert PolicySpec.model_validate(dumped) == model
    errors = [e.message for e in Draft202012Validator(SPEC_SCHEMA).iter_errors(dumped)]
    assert errors == [], errors
    # Accepted durations never overflow (CEL's duration() and timedelta alike).
    assert model.interval_delta.total_seconds() < 292 * 365 * 86400


@settings(max_examples=200, deadline=None)
@given(durations)
def test_duration_shape_rule_and_model_agree(text: str) -> None:
    import re

    from prefect_workpool_operator.core.durations import DURATION_SAFE_PATTERN

    spec = {"prefect": {"apiUrl": "http://x/api", "workPool": "p"}, "interval": text}
    try:
        PolicySpec.model_validate(spec)
        accepted = True
    except ValidationError:
        accepted = False
    # What the model accepts passes the CEL shape rule (the interval minimum aside).
    if accepted:
        assert re.fullmatch(DURATION_SAFE_PATTERN, text)


def test_the_strategy_draws_accepted_specs() -> None:
    """The round-trip property is not vacuous: a fixed (derandomized) draw holds enough valid specs."""
    accepted: list[int] = []

    @settings(max_examples=200, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(specs())
    def draw(spec: dict[str, Any]) -> None:
        try:
            PolicySpec.model_validate(spec)
        except ValidationError:
            return
        accepted.append(1)

    draw()
    assert sum(accepted) >= 20, f"the strategy drew only {sum(accepted)} valid specs of 200"
