"""Keep chosen variable defaults of a work pool's base job template at declared values.

Only the named variables' ``default`` entries are compared and changed; the rest of
the template (job_configuration, other variables, descriptions) is left exactly as
it is. A declared variable the template does not have is reported, never added:
newer prefect-aws templates dropped the ECS timeout variables, and a silently added
default would do nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect_workpool_operator.core.conditions import Condition
from prefect_workpool_operator.core.template_values import value_problem

JOB_TEMPLATE_SYNCED = "JobTemplateSynced"
CONFIG_CONSISTENT = "ConfigConsistent"
TASK_START_TIMEOUT = "task_start_timeout_seconds"


@dataclass
class TemplatePlan:
    drift: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # name -> (current, declared)
    missing: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)  # name -> the schema rule the value breaks
    template: dict[str, Any] | None = None  # the whole new template, when there is drift

    @property
    def in_sync(self) -> bool:
        return not self.drift and not self.missing and not self.invalid

    @property
    def writable(self) -> bool:
        """Write only a complete, valid change: one bad variable holds back all of them."""
        return self.template is not None and not self.missing and not self.invalid


def variable_defaults(template: dict[str, Any] | None) -> dict[str, Any]:
    properties = ((template or {}).get("variables") or {}).get("properties") or {}
    return {name: spec.get("default") for name, spec in properties.items() if isinstance(spec, dict)}


def plan_template(template: dict[str, Any] | None, declared: dict[str, Any]) -> TemplatePlan:
    plan = TemplatePlan()
    variables = (template or {}).get("variables") or {}
    properties = variables.get("properties") or {}
    for name, value in sorted(declared.items()):
        problem = value_problem(variables, name, value) if name in properties else None
        if name not in properties:
            plan.missing.append(name)
        elif problem is not None:
            plan.invalid[name] = problem
        elif not _same(properties[name].get("default"), value):
            plan.drift[name] = (properties[name].get("default"), value)
    if plan.drift:
        new = copy.deepcopy(template or {})
        for name, (_, value) in plan.drift.items():
            new["variables"]["properties"][name]["default"] = value
        plan.template = new
    return plan


def _same(current: Any, declared: Any) -> bool:
    """JSON equality: True is not 1, 1.0 is 1."""
    if isinstance(current, bool) or isinstance(declared, bool):
        return type(current) is type(declared) and current == declared
    return bool(current == declared)


def template_condition(plan: TemplatePlan, *, pool: str, dry_run: bool, declared: int) -> Condition:
    if plan.invalid:
        problems = "; ".join(f"{name}: {rule}" for name, rule in plan.invalid.items())
        return Condition(JOB_TEMPLATE_SYNCED, "False", "InvalidValue",
                         f"The base job template of {pool!r} would reject jobTemplate.variables ({problems}); "
                         "nothing was written. Fix the value(s) in spec.jobTemplate.variables.")
    if plan.missing:
        names = ", ".join(plan.missing)
        return Condition(JOB_TEMPLATE_SYNCED, "False", "VariableNotInTemplate",
                         f"The base job template of {pool!r} declares no variable(s) {names}; the template was left unchanged "
                         "(newer prefect-aws templates dropped the ECS timeout variables).")
    if plan.drift and dry_run:
        return Condition(JOB_TEMPLATE_SYNCED, "False", "DryRun", f"dryRun: would set {_changes(plan)}.")
    if plan.drift:
        return Condition(JOB_TEMPLATE_SYNCED, "True", "Repaired", f"Set {_changes(plan)}.")
    return Condition(JOB_TEMPLATE_SYNCED, "True", "InSync", f"{declared} declared variable default(s) match.")


def applied_condition(written: TemplatePlan, reread: dict[str, Any] | None, *, pool: str) -> Condition | None:
    """After a write, the template as re-read must hold every value written; else say so."""
    held = variable_defaults(reread)
    lost = [name for name, (_, value) in written.drift.items() if not _same(held.get(name), value)]
    if not lost:
        return None
    return Condition(JOB_TEMPLATE_SYNCED, "False", "NotApplied",
                     f"The base job template of {pool!r} was written but does not hold {', '.join(lost)} when read back.")


def timeout_consistency(
    pending_timeout: timedelta | None, template: dict[str, Any] | None, declared: dict[str, Any]
) -> Condition | None:
    """Warn when recovery would give up on runs ECS may still be starting.

    Only templates of prefect-aws 0.4.20–0.5.16 have ``task_start_timeout_seconds`` (the
    worker then waits that long for the task to start). From 0.6 on the worker returns
    right after RunTask and the template has no start timeout at all (FACTS.md lists
    0.7.12's variables): nothing to compare, and the operator's ECS check of the task
    takes its place.
    """
    if pending_timeout is None:
        return None
    start_timeout = declared.get(TASK_START_TIMEOUT, variable_defaults(template).get(TASK_START_TIMEOUT))
    if not isinstance(start_timeout, (int, float)) or isinstance(start_timeout, bool):
        return Condition(CONFIG_CONSISTENT, "True", "NoTaskStartTimeout",
                         f"The pool's template has no {TASK_START_TIMEOUT} (prefect-aws 0.6 and later have no ECS "
                         "start timeout: the worker returns right after RunTask), so nothing bounds pendingTimeout; "
                         "the operator checks each stale run's task in ECS (spec.ecs) instead.")
    if pending_timeout.total_seconds() < start_timeout:
        return Condition(CONFIG_CONSISTENT, "False", "PendingTimeoutBelowTaskStartTimeout",
                         f"staleRuns.pendingTimeout ({int(pending_timeout.total_seconds())}s) is shorter than the pool's "
                         f"{TASK_START_TIMEOUT} ({start_timeout}s): runs ECS is still starting would be stale "
                         "(recovery still waits for proof that their task is gone).")
    return Condition(CONFIG_CONSISTENT, "True", "Consistent",
                     f"staleRuns.pendingTimeout is at least the pool's {TASK_START_TIMEOUT} ({start_timeout}s).")


def _changes(plan: TemplatePlan) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in plan.drift.items())
