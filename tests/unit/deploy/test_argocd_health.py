"""The Argo CD health check (deploy/argocd/health.lua), run with lupa against sample policies.

Argo CD runs health scripts in gopher-lua, a Lua 5.1, so the script runs here under
Lua 5.1 (and 5.4, so it relies on nothing version-specific). The sample statuses are
built with the operator's own condition code where it exists, so a renamed reason
breaks this test rather than the health check in someone's Argo CD.
"""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml

from prefect_workpool_operator.core import health, job_template, scaling, stale_plan
from prefect_workpool_operator.core.conditions import Condition, merge_conditions
from tests.support import spec_rules

REPO = pathlib.Path(__file__).resolve().parents[3]
ARGOCD = REPO / "deploy" / "argocd"
SCRIPT = (ARGOCD / "health.lua").read_text()
KEY = "resource.customizations.health.prefectops.dev_PrefectWorkPoolPolicy"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RULES = spec_rules.recovery(hard_timeout=timedelta(hours=1))


@pytest.fixture(params=["lua51", "lua54"])
def lua(request: pytest.FixtureRequest) -> Any:
    return importlib.import_module(f"lupa.{request.param}").LuaRuntime(unpack_returned_tuples=True)


def run_health(lua: Any, obj: dict[str, Any]) -> dict[str, str]:
    """Evaluate the script as Argo CD does: the live object as global ``obj``, a table back."""
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPT)
    return dict(result.items())


def policy(*, generation: int = 1, suspend: bool = False, observed: int | None = 1,
           conditions: list[Condition] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "prefectops.dev/v1alpha1", "kind": "PrefectWorkPoolPolicy",
        "metadata": {"name": "etl", "namespace": "data", "generation": generation},
        "spec": {"prefect": {"apiUrl": "http://prefect:4200/api", "workPool": "ecs-pool"}, "suspend": suspend},
    }
    if conditions is not None:
        obj["status"] = {"conditions": merge_conditions(None, conditions, NOW, observed)}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def observed_pool(pool_status: str = "READY") -> list[Condition]:
    observation = health.PoolObservation(pool_status=pool_status, workers_online=1 if pool_status == "READY" else 0,
                                         workers_offline=0, late=4, pending=2, running=1, server_version="3.8.8")
    return health.health_conditions(observation, None, pool="ecs-pool", api_url="http://prefect:4200/api")


def failed(reason: str, message: str) -> list[Condition]:
    return health.health_conditions(None, health.Failure(reason, message), pool="ecs-pool", api_url="")


def recovery(plan: stale_plan.RecoveryPlan, *, dry_run: bool = False, failed_writes: int = 0) -> Condition:
    return stale_plan.recovery_condition(plan, RULES, dry_run=dry_run, failed=failed_writes)


def scaled(reason: str, message: str) -> Condition:
    memory = scaling.ScalingMemory()
    decision = scaling.ScalingDecision(target=None, reason=reason, message=message, recommendation=None,
                                       memory=memory, memory_unapplied=memory)
    return scaling.scaling_condition(decision)


def template(plan: job_template.TemplatePlan, *, dry_run: bool = False) -> Condition:
    return job_template.template_condition(plan, pool="ecs-pool", dry_run=dry_run, declared=1)


CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "suspended": (policy(suspend=True, conditions=health.suspended_conditions()), "Suspended", "spec.suspend"),
    "suspended before the operator saw it": (policy(suspend=True, generation=2, conditions=observed_pool()),
                                             "Suspended", "spec.suspend"),
    "new, no status": (policy(), "Progressing", "reconcile the policy"),
    "status without conditions": ({**policy(), "status": {}}, "Progressing", "reconcile the policy"),
    "spec edited, not yet observed": (
        policy(generation=3, observed=2, conditions=failed(health.SECRET_NOT_FOUND, "Secret data/x does not exist")),
        "Progressing", "generation 3",
    ),
    "no observedGeneration": (policy(observed=None, conditions=observed_pool()), "Progressing", "generation 1"),
    "empty conditions": (policy(conditions=[]), "Progressing", "Ready condition"),
    "Ready Unknown": (policy(conditions=[Condition("Ready", "Unknown", "Starting", "")]), "Progressing", "Ready"),
    "secret missing": (policy(conditions=failed(health.SECRET_NOT_FOUND, "Secret data/prefect-auth does not exist")),
                       "Degraded", "Ready=False SecretNotFound: Secret data/prefect-auth does not exist"),
    "prefect unreachable": (policy(conditions=failed(health.UNREACHABLE, "connection refused")),
                            "Degraded", "Ready=False Unreachable: connection refused"),
    "unknown pool": (policy(conditions=failed(health.WORK_POOL_NOT_FOUND, "no work pool 'ecs-pool'")),
                     "Degraded", "WorkPoolNotFound"),
    "invalid spec": (policy(conditions=failed(health.INVALID_SPEC, "spec.interval: too short")),
                     "Degraded", "InvalidSpec"),
    "internal error": (policy(conditions=[Condition("Ready", "False", "InternalError", "Unexpected KeyError")]),
                       "Degraded", "InternalError"),
    "reconciled": (policy(conditions=observed_pool()), "Healthy", "Work pool 'ecs-pool' observed"),
    "pool without workers is still healthy": (policy(conditions=observed_pool("NOT_READY")),
                                              "Healthy", "WorkPoolReady=False PoolNotReady"),
    "pool paused is still healthy": (policy(conditions=observed_pool("PAUSED")), "Healthy", "PoolPaused"),
    "runs recovered": (
        policy(conditions=observed_pool() + [recovery(stale_plan.RecoveryPlan(stale=2, reschedule=["a", "b"]))]),
        "Healthy", "observed",
    ),
    "recovery writes failed": (
        policy(conditions=observed_pool() + [recovery(stale_plan.RecoveryPlan(stale=2, reschedule=["a", "b"]),
                                                      failed_writes=2)]),
        "Degraded", "StaleRunsRecovered=False RecoveryFailed",
    ),
    "dry run is as asked": (
        policy(conditions=observed_pool() + [recovery(stale_plan.RecoveryPlan(stale=1, reschedule=["a"]), dry_run=True)]),
        "Healthy", "observed",
    ),
    "report only is as asked": (
        policy(conditions=observed_pool() + [recovery(stale_plan.RecoveryPlan(stale=1, report_only=["a"]))]),
        "Healthy", "observed",
    ),
    "scaling conflict": (
        policy(conditions=observed_pool() + [scaled(scaling.CONFLICT, "service prefect-worker has an autoscaling target")]),
        "Degraded", "Scaling=False Conflict: service prefect-worker has an autoscaling target",
    ),
    "scaling holds for data": (policy(conditions=observed_pool() + [scaled(scaling.HOLDING, "no backlog")]),
                               "Healthy", "observed"),
    "scaled up": (policy(conditions=observed_pool() + [scaled(scaling.SCALED_UP, "desiredCount 2 -> 3")]),
                  "Healthy", "observed"),
    "job template variable missing": (
        policy(conditions=observed_pool() + [template(job_template.TemplatePlan(missing=["task_start_timeout_seconds"]))]),
        "Degraded", "JobTemplateSynced=False VariableNotInTemplate",
    ),
    "job template dry run is as asked": (
        policy(conditions=observed_pool() + [template(job_template.TemplatePlan(drift={"cpu": (256, 512)}), dry_run=True)]),
        "Healthy", "observed",
    ),
    "pendingTimeout below the ECS start timeout": (
        policy(conditions=observed_pool() + [job_template.timeout_consistency(
            timedelta(minutes=2), None, {job_template.TASK_START_TIMEOUT: 300})]),
        "Degraded", "ConfigConsistent=False PendingTimeoutBelowTaskStartTimeout",
    ),
    "AWS refused": (
        policy(conditions=observed_pool() + [Condition("AwsConnected", "False", "AccessDenied", "ecs:DescribeServices")]),
        "Degraded", "AwsConnected=False AccessDenied",
    ),
    "consistent timeouts": (
        policy(conditions=observed_pool() + [job_template.timeout_consistency(
            timedelta(minutes=10), None, {job_template.TASK_START_TIMEOUT: 300})]),
        "Healthy", "observed",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_health(lua: Any, case: str) -> None:
    obj, status, message = CASES[case]
    result = run_health(lua, obj)
    assert result["status"] == status, result
    assert message in result["message"], result


def test_every_ready_false_reason_is_degraded(lua: Any) -> None:
    reasons = [value for name, value in vars(health).items()
               if name.isupper() and isinstance(value, str) and value not in
               {health.READY, health.PREFECT_CONNECTED, health.WORK_POOL_READY, health.RECONCILED,
                health.SUSPENDED, health.CONNECTED, health.NOT_CHECKED}]
    assert health.SECRET_NOT_FOUND in reasons and health.RATE_LIMITED in reasons
    for reason in reasons:
        assert run_health(lua, policy(conditions=failed(reason, "why")))["status"] == "Degraded", reason


def test_configmap_patch_embeds_the_script_verbatim() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert patch == {"data": {KEY: SCRIPT}}


def test_configmap_patch_applies_with_kubectl(tmp_path: pathlib.Path) -> None:
    """The documented `kubectl patch --type merge --patch-file` works on an argocd-cm (offline)."""
    cm = tmp_path / "argocd-cm.yaml"
    cm.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                  "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                                  "data": {"url": "https://argocd.example.com"}}))
    kubectl = str(pathlib.Path(sys.executable).parent / "kubectl")
    out = subprocess.run(
        [kubectl, "patch", "--local", "-f", str(cm), "--type", "merge",
         "--patch-file", str(ARGOCD / "argocd-cm-patch.yaml"), "-o", "yaml"],
        capture_output=True, text=True, check=True,
    ).stdout
    data = yaml.safe_load(out)["data"]
    assert data == {"url": "https://argocd.example.com", KEY: SCRIPT}


def test_application_examples() -> None:
    chart_app = yaml.safe_load((ARGOCD / "application-chart.yaml").read_text())
    source = chart_app["spec"]["source"]
    assert (REPO / source["path"] / "Chart.yaml").is_file()
    # The example's values are valid chart values.
    jsonschema = pytest.importorskip("jsonschema")
    schema = yaml.safe_load((REPO / source["path"] / "values.schema.json").read_text())
    defaults = yaml.safe_load((REPO / source["path"] / "values.yaml").read_text())
    jsonschema.validate(_merge(defaults, source["helm"]["valuesObject"]), schema)
    # Deleting the Application must not cascade to the CRD (and with it every policy).
    assert "resources-finalizer.argocd.argoproj.io" not in chart_app["metadata"].get("finalizers", [])

    policies_app = yaml.safe_load((ARGOCD / "application-policies.yaml").read_text())
    assert "SkipDryRunOnMissingResource=true" in policies_app["spec"]["syncPolicy"]["syncOptions"]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


@pytest.mark.parametrize("heartbeat", [None, "2026-11-30T12:00:00Z", "2020-01-01T00:00:00Z"])
@pytest.mark.parametrize("case", ["healthy", "degraded"])
def test_health_does_not_depend_on_the_status_heartbeat(lua: Any, heartbeat: str | None, case: str) -> None:
    """The status is written only on change, with lastReconcileTime as a heartbeat: an
    old or missing heartbeat must not change what Argo CD shows."""
    conditions = observed_pool() if case == "healthy" else failed(health.UNAUTHORIZED, "401")
    obj = policy(conditions=conditions)
    expected = run_health(lua, obj)
    if heartbeat is not None:
        obj["status"]["lastReconcileTime"] = heartbeat
    assert run_health(lua, obj) == expected
    assert expected["status"] == ("Healthy" if case == "healthy" else "Degraded")
