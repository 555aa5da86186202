"""The operator's own validation agrees with the CRD and never echoes input values."""

import pytest
from pydantic import ValidationError

from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.cycle.reconcile import _describe

BASE = {"prefect": {"apiUrl": "http://127.0.0.1:4200/api", "workPool": "ecs"}}


def test_defaults() -> None:
    spec = PolicySpec.model_validate(BASE)
    assert (spec.interval, spec.suspend, spec.dry_run, spec.prefect.work_queues) == ("30s", False, False, [])
    assert spec.interval_delta.total_seconds() == 30
    assert spec.request_timeout_seconds == 10


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"bogus": 1}, "spec.bogus"),
        ({"interval": "soon"}, "spec.interval"),
        ({"prefect": {**BASE["prefect"], "apiUrl": "ftp://x"}}, "spec.prefect.apiUrl"),
        ({"prefect": {**BASE["prefect"], "apiUrl": "https://user:hunter2@x/api"}}, "spec.prefect.apiUrl"),
        ({"prefect": {**BASE["prefect"], "workPool": ""}}, "spec.prefect.workPool"),
        ({"prefect": {**BASE["prefect"], "auth": {"apiKeySecretRef": {"name": "a", "key": "k"},
                                                    "basicAuthSecretRef": {"name": "b", "key": "k"}}}},
         "at most one"),
    ],
)
def test_invalid_specs_are_described_without_their_values(patch: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as err:
        PolicySpec.model_validate({**BASE, **patch})
    text = _describe(err.value)
    assert fragment in text
    assert "hunter2" not in text
