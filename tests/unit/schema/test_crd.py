"""The committed CRD is exactly what the models generate, and it is useful to kubectl explain."""

from pathlib import Path


from prefect_workpool_operator.schema.crd import build_crd, render

CRD_PATH = Path(__file__).parents[3] / "crds" / "prefectworkpoolpolicies.prefectops.dev.yaml"


def test_committed_crd_matches_models() -> None:
    assert CRD_PATH.read_text() == render(), "crds/ is stale: run `make crds` and commit the result"


def _walk(node: dict, path: str):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def _root() -> dict:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_spec_and_status_field_has_a_description() -> None:
    missing = [
        path for part in ("spec", "status")
        for path, node in _walk(_root()["properties"][part], part)
        if not node.get("description")
    ]
    assert missing == []


def test_schema_is_structural() -> None:
    text = render()
    for forbidden in ("$ref", "anyOf", "title", "$defs", "&id"):
        assert forbidden not in text
    for path, node in _walk(_root(), "root"):
        assert "type" in node, f"{path} has no type"


def test_cross_field_and_duration_rules_are_cel() -> None:
    spec = _root()["properties"]["spec"]
    auth_rules = spec["properties"]["prefect"]["properties"]["auth"]["x-kubernetes-validations"]
    assert "apiKeySecretRef" in auth_rules[0]["rule"] and "basicAuthSecretRef" in auth_rules[0]["rule"]
    interval_rules = [r["rule"] for r in spec["properties"]["interval"]["x-kubernetes-validations"]]
    assert interval_rules[0].startswith("self.matches(")  # shape first: a clear message, never an overflow
    assert any("duration(self) >= duration('10s')" in r for r in interval_rules[1:])


def test_conditions_are_a_map_keyed_by_type_and_status_is_a_subresource() -> None:
    version = build_crd()["spec"]["versions"][0]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Pool", "Late", "Pending", "Workers", "Ready", "Reason", "Mode", "Desired", "Running", "Recovered", "Shard",
        "Owner", "Age"
    ]
    # Mode, workers, last recovery, shard and owner only in `kubectl get -o wide`.
    priority = {c["name"]: c.get("priority", 0) for c in version["additionalPrinterColumns"]}
    assert {name for name, p in priority.items() if p == 1} == {
        "Reason", "Mode", "Desired", "Running", "Recovered", "Shard", "Owner"}


def test_policy_reference_doc_matches_models() -> None:
    from prefect_workpool_operator.schema.reference import render as render_reference

    doc = Path(__file__).parents[3] / "docs" / "policy-reference.md"
    assert doc.read_text() == render_reference(), "docs/policy-reference.md is stale: run `make docs`"
