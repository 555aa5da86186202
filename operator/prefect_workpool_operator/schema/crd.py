"""Generate the CustomResourceDefinition from the pydantic models.

pydantic emits JSON Schema (with ``$ref``, ``anyOf`` for optionals, titles); Kubernetes
wants a *structural* OpenAPI v3 schema: everything inlined, one type per node,
no titles. ``python -m prefect_workpool_operator.schema.crd`` prints the CRD as YAML.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from prefect_workpool_operator import GROUP, KIND, PLURAL, VERSION
from prefect_workpool_operator.schema.models import PolicySpec, PolicyStatus

# Keys of pydantic's JSON Schema that have a meaning in a structural schema.
_KEEP = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "required", "properties", "items", "additionalProperties",
}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:  # Optional[X] -> X (absence, not null, means "unset")
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            rest.pop("default")
        return _structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            continue  # extra="forbid" is what structural pruning does anyway
        elif key == "const":  # a Literal with one value
            out["enum"] = [value]
        elif key in _KEEP:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return _structural(raw, raw.get("$defs", {}))


def _printer_columns() -> list[dict[str, Any]]:
    def col(name: str, path: str, kind: str = "string", desc: str = "", priority: int = 0) -> dict[str, Any]:
        c: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
        if desc:
            c["description"] = desc
        if priority:
            c["priority"] = priority
        return c

    return [
        col("Pool", ".spec.prefect.workPool", desc="Prefect work pool"),
        col("Late", ".status.runs.late", "integer", "Late or due scheduled runs"),
        col("Pending", ".status.runs.pending", "integer", "Runs in PENDING"),
        col("Workers", ".status.workers.online", "integer", "Online Prefect workers"),
        col("Ready", '.status.conditions[?(@.type=="Ready")].status', desc="Ready condition"),
        col("Reason", '.status.conditions[?(@.type=="Ready")].reason', desc="Ready reason", priority=1),
        col("Mode", ".spec.scaling.mode", desc="Worker scaling mode", priority=1),
        col("Desired", ".status.scaling.desired", "integer", "The worker service's desiredCount", priority=1),
        col("Running", ".status.scaling.running", "integer", "The worker service's running tasks", priority=1),
        col("Recovered", ".status.lastRecovery.time", "date", "When runs were last recovered", priority=1),
        col("Shard", ".status.owner.shard", desc="Shard whose leader cycles the policy", priority=1),
        col("Owner", ".status.owner.pod", desc="Operator pod that cycles the policy", priority=1),
        col("Age", ".metadata.creationTimestamp", "date"),
    ]


def build_crd() -> dict[str, Any]:
    spec_schema = _schema(PolicySpec)
    status_schema = _schema(PolicyStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["pwpp"],
                "categories": ["prefect"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "PrefectWorkPoolPolicy keeps one Prefect work pool healthy: it observes the "
                                "pool and reports its state as conditions, figures and Events."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version of this object."},
                                "kind": {"type": "string", "description": "Kind of this object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Shared sub-schemas are written out in full: anchors confuse readers and some tools."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    header = "# Generated by `make crds` from operator/prefect_workpool_operator/schema/models.py. Do not edit.\n"
    return header + yaml.dump(build_crd(), Dumper=_NoAliasDumper, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
