"""Every policy under examples/ validates against the models (as the API server would)."""

from pathlib import Path

import pytest
import yaml

from prefect_workpool_operator.models import PolicySpec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_policies_validate(path: Path) -> None:
    policies = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "PrefectWorkPoolPolicy"]
    assert policies, f"{path} has no policy"
    for doc in policies:
        PolicySpec.model_validate(doc["spec"])
