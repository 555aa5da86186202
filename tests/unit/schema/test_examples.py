"""Every policy under examples/ validates against the models (as the API server would)."""

from pathlib import Path

import pytest
import yaml

from prefect_workpool_operator.schema.models import PolicySpec

# Helm values files (values*.yaml) are the chart's; tests/unit/deploy/test_chart.py checks them.
EXAMPLES = sorted(p for p in (Path(__file__).parents[3] / "examples").glob("*/*.yaml") if not p.name.startswith("values"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_example_policies_validate(path: Path) -> None:
    policies = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "PrefectWorkPoolPolicy"]
    assert policies, f"{path} has no policy"
    for doc in policies:
        PolicySpec.model_validate(doc["spec"])
