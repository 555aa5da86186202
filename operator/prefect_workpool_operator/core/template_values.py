"""Would the pool's base job template accept a declared variable value?

Each declared value is checked against that variable's JSON schema in the template's
``variables.properties`` (with the template's ``definitions`` for ``$ref``) before
anything is written: a value the template would reject at flow-run time must never be
written and reported in sync.
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

# JSON Schema calls 1.0 and 1e30 integers; Python, Prefect and ECS need an int that fits 64 bits.
INT64 = 2**63


def value_problem(variables: dict[str, Any] | None, name: str, value: Any) -> str | None:
    """Why ``value`` does not fit variable ``name`` of the template, or None when it fits."""
    variables = variables or {}
    schema = ((variables.get("properties") or {}).get(name))
    if not isinstance(schema, dict):
        return None  # a variable the template lacks is reported elsewhere
    root = {**schema}
    for defs in ("definitions", "$defs"):
        if isinstance(variables.get(defs), dict):
            root[defs] = variables[defs]
    strict = _integer_problem(schema, value)
    if strict is not None:
        return strict
    try:
        validator = Draft202012Validator(root, format_checker=FormatChecker())
        error = _best(list(validator.iter_errors(value)))
    except Exception as exc:  # an unusable schema in the pool: say so, never crash the cycle
        return f"the template's schema for it cannot be used ({type(exc).__name__})"
    return None if error is None else _describe(error)


def _integer_problem(schema: dict[str, Any], value: Any) -> str | None:
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "integer" not in types or "number" in types:
        return None
    if isinstance(value, float) and value.is_integer():
        return f"type: {value!r} is a float; the template wants an integer"
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return "type: the integer does not fit in 64 bits"
    return None


def _best(errors: list[ValidationError]) -> ValidationError | None:
    if not errors:
        return None
    # Prefer the deepest, most specific error (anyOf branches report their own).
    return max(errors, key=lambda e: (len(e.absolute_path), -len(e.context or [])))


def _describe(error: ValidationError) -> str:
    rule = str(error.validator)
    where = "".join(f"[{p!r}]" for p in error.absolute_path)
    expected = error.validator_value
    if rule in {"anyOf", "oneOf", "allOf"}:
        inner = sorted({str(e.validator) for e in error.context or []})
        return f"{rule}{where}: the value matches none of the allowed forms ({', '.join(inner) or 'see template'})"
    if rule == "$ref":
        return f"$ref{where}: the value does not match {expected}"
    if isinstance(expected, (dict, list)) and len(str(expected)) > 120:
        expected = "(see the template)"
    return f"{rule}{where}: must satisfy {rule}={expected!r}"
