"""``why <namespace>/<policy> <flow-run-id>``: why was this run (not) recovered?

Reads what the operator reads, through the operator's own adapters: the policy from
the API server (the operator's login, ``kube.api``: in-cluster ServiceAccount, else
kubeconfig), its Secrets (``kube.secrets``, GET only), the run, the pool's workers, the claim and the claimer's
started/stopped events and the requeue count from Prefect (``prefect.client``,
``cycle.recovery``), the run's ECS task by pid or tag (``aws.EcsInfrastructureCheck``).
Then ``core.why`` words ``core.stale.decide``'s answer. It writes nothing anywhere.
Secret values are used as the operator uses them and never printed.

Also a kubectl plugin: the console script ``kubectl-pwpp`` (``kubectl pwpp why …``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence
import aiohttp
import httpx
from kubernetes.aio.client import CustomObjectsApi
from pydantic import ValidationError

from prefect_workpool_operator import GROUP, PLURAL, VERSION
from prefect_workpool_operator.aws import AwsError, EcsInfrastructureCheck
from prefect_workpool_operator.cycle.clients import AwsConnection, PrefectConnection, aws_client_for, prefect_client_for
from prefect_workpool_operator.core import pool_types, why
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.recovery_plan import recovery_rules
from prefect_workpool_operator.core.stale import NOT_CHECKED, Infrastructure, InfraReading, PendingRun, claimer_status
from prefect_workpool_operator.kube.api import KubeClient, load_configuration, read_json
from prefect_workpool_operator.schema.models import PolicySpec
from prefect_workpool_operator.prefect.http import PrefectHttp
from prefect_workpool_operator.cycle.memory import RecoveryMemory
from prefect_workpool_operator.cycle.recovery import claimer_lifecycles, pending_run, with_claims_and_counts
from prefect_workpool_operator.kube.secrets import SecretCache


class WhyError(Exception):
    """Ends `why` with a message and an exit code (core.why.EXIT_*)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Kubernetes:
    """The API server as the operator reaches it: its login (kube_api) and a Secret reader
    that only GETs (no watch for one question)."""

    client: KubeClient
    secrets: SecretCache

    @classmethod
    async def login(cls) -> Kubernetes:
        try:
            configuration = await load_configuration()
        except Exception as exc:  # the library raises its own errors for a broken kubeconfig
            raise WhyError(why.EXIT_READ_FAILED, f"cannot log in to Kubernetes: {type(exc).__name__}") from None
        client = KubeClient(configuration)
        return cls(client, SecretCache(client, mode="off", fallback_seconds=0))

    async def read_policy(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            status, obj = await read_json(CustomObjectsApi(self.client.api).get_namespaced_custom_object_without_preload_content(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=30))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise WhyError(why.EXIT_READ_FAILED, f"cannot reach the API server: {type(exc).__name__}") from None
        if status == 404:
            raise WhyError(why.EXIT_UNKNOWN_POLICY, f"policy {namespace}/{name} does not exist")
        if obj is None:
            raise WhyError(why.EXIT_READ_FAILED, f"policy {namespace}/{name} could not be read: HTTP {status}")
        return obj

    async def aclose(self) -> None:
        await self.secrets.aclose()
        await self.client.aclose()


async def explain_run(
    namespace: str, name: str, run_id: str, *, kube: Kubernetes, http: PrefectHttp | httpx.AsyncClient, now: datetime,
) -> why.Answer:
    """The answer for one run; raises ``WhyError``. Reads only."""
    policy = f"{namespace}/{name}"
    body = await kube.read_policy(namespace, name)
    try:
        spec = PolicySpec.model_validate(body.get("spec") or {})
    except ValidationError:
        raise WhyError(why.EXIT_UNKNOWN_POLICY, f"policy {policy} has an invalid spec (see its Ready condition)") from None
    try:
        return await _explain(policy, namespace, spec, run_id, kube=kube, http=http, now=now)
    except OperatorError as exc:
        raise WhyError(why.EXIT_READ_FAILED, f"{exc.reason}: {exc.message}") from None


async def _explain(policy: str, namespace: str, spec: PolicySpec, run_id: str, *, kube: Kubernetes,
                   http: PrefectHttp | httpx.AsyncClient, now: datetime) -> why.Answer:
    client = await prefect_client_for(spec, namespace, kube.secrets, http, PrefectConnection())
    raw = await client.read_flow_run(run_id)
    if raw is None:
        raise WhyError(why.EXIT_UNKNOWN_RUN, f"run {run_id} does not exist in Prefect at {spec.prefect.api_url}")
    stale_spec = spec.stale_runs
    state = raw.get("state") or {}
    facts = why.RunFacts(
        state_type=str(state.get("type") or raw.get("state_type") or "UNKNOWN"),
        state_name=str(state.get("name") or raw.get("state_name") or ""),
        work_pool=raw.get("work_pool_name"), work_queue=raw.get("work_queue_name"), tags=tuple(raw.get("tags") or ()),
    )
    scope = why.Scope(
        spec.prefect.work_pool,
        tuple((stale_spec.work_queues if stale_spec else None) or spec.prefect.work_queues),
        tuple(stale_spec.tags) if stale_spec else (),
    )
    problem = why.scope_problem(run_id, facts, scope)
    if problem:
        raise WhyError(why.EXIT_UNKNOWN_RUN, problem)
    if stale_spec is None:
        return why.recovery_off(policy, run_id, "recovery is off for this policy (spec.staleRuns is not set)")
    if facts.state_type != "PENDING":
        return why.not_pending(policy, run_id, facts)
    pool = await client.observe_pool(spec.prefect.work_pool, list(spec.prefect.work_queues), now)
    features = pool_types.features_for(pool.pool_type)
    if not features.recovery:
        return why.recovery_off(policy, run_id, f"pools of type {features.pool_type!r} have no stale-run recovery")
    run = (await with_claims_and_counts(client, [pending_run(raw)], RecoveryMemory(), now))[0]
    lifecycle = (await claimer_lifecycles(client, [run])).get(run.claimer or "")
    claimer = claimer_status(run, pool.online_workers, {run.claimer: lifecycle} if run.claimer and lifecycle else {})
    infra, not_checked = await _infrastructure(spec, namespace, kube, features.ecs, run)
    reading = why.Reading(run, claimer, lifecycle, infra, not_checked)
    return why.explain(policy, facts, reading, recovery_rules(stale_spec, spec.interval_delta), now=now,
                       dry_run=spec.dry_run, suspended=spec.suspend)


async def _infrastructure(spec: PolicySpec, namespace: str, kube: Kubernetes, ecs_pool: bool,
                          run: PendingRun) -> tuple[InfraReading, str]:
    """The run's ECS task as the operator's check reads it, or why there is no check."""
    assert spec.stale_runs is not None
    if spec.ecs is None:
        return NOT_CHECKED, "spec.ecs is not set"
    if not spec.stale_runs.verify_infrastructure:
        return NOT_CHECKED, "staleRuns.verifyInfrastructure is false"
    if not ecs_pool:
        return NOT_CHECKED, "the pool is not an ecs pool"
    connection = AwsConnection()
    try:
        aws = await aws_client_for(spec.ecs, namespace, kube.secrets, connection)
        readings = await EcsInfrastructureCheck(aws, spec.ecs.cluster).check([run])
    except AwsError as exc:
        return InfraReading(Infrastructure.UNKNOWN, exc.message), ""
    finally:
        connection.close()
    reading = readings.get(run.id, NOT_CHECKED)
    return reading, "" if reading is not NOT_CHECKED else "no pid and no spec.ecs.cluster to look for its tag"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="why", description="Why was this flow run (not) recovered? Reads only; changes nothing.",
        epilog="exit codes: 0 answered, 1 a read failed, 2 bad arguments, 3 unknown policy or invalid spec, "
               "4 unknown run or not the policy's",
    )
    parser.add_argument("policy", help="<namespace>/<policy>")
    parser.add_argument("run_id", metavar="flow-run-id")
    args = parser.parse_args(argv)
    namespace, _, name = args.policy.partition("/")
    if not namespace or not name:
        parser.error("policy must be <namespace>/<policy>")
    logging.basicConfig(level=logging.WARNING)
    try:
        answer = asyncio.run(_run(namespace, name, args.run_id))
    except WhyError as exc:
        print(f"why: {exc.message}", file=sys.stderr)
        return exc.code
    sys.stdout.write(answer.text())
    return why.EXIT_DECIDED


async def _run(namespace: str, name: str, run_id: str) -> why.Answer:
    kube = await Kubernetes.login()
    http = PrefectHttp(max_connections=4)
    try:
        return await explain_run(namespace, name, run_id, kube=kube, http=http, now=datetime.now(timezone.utc))
    finally:
        await http.aclose()
        await kube.aclose()


def plugin_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl pwpp why …``: the console script ``kubectl-pwpp`` (kubectl runs it when on PATH)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "why":
        print("usage: kubectl pwpp why <namespace>/<policy> <flow-run-id>", file=sys.stderr)
        return why.EXIT_USAGE
    return main(args[1:])


def entry_point() -> None:
    sys.exit(plugin_main())
