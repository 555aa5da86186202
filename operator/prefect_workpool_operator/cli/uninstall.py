"""``python -m prefect_workpool_operator uninstall``: hand the policies back before the
operator goes, so no finalizer of ours is left to block their deletion once no operator runs.

kopf puts a finalizer on every policy it times; with the operator gone, deleting a policy would
hang until someone stripped it by hand. The chart runs this as a ``pre-delete`` hook Job (its
own ServiceAccount and rules, removed with it): it deletes the release's operator Deployments,
waits for their pods to be gone (each releases its Lease as it stops, and no watch is left
to put a finalizer back), then removes the finalizer from the policies the release served.
Deleting such a policy later removes nothing in AWS (no operator runs): delete the policies
first to have their Application Auto Scaling resources removed (docs/install.md).

Settings (the chart sets them): POD_NAMESPACE (the release's), PWO_UNINSTALL_DEPLOYMENTS
(comma-separated names), PWO_UNINSTALL_POD_SELECTOR (their pods' label selector),
PWO_NAMESPACES (the namespaces served; empty = all), PWO_UNINSTALL_TIMEOUT_SECONDS (240).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from kubernetes.aio.client import ApiException, AppsV1Api, CoreV1Api, CustomObjectsApi, V1DeleteOptions

from prefect_workpool_operator import GROUP, PLURAL, VERSION
from prefect_workpool_operator.kube.api import KubeClient, load_configuration

log = logging.getLogger(__name__)
REQUEST_SECONDS = 10.0
FINALIZER = f"{GROUP}/finalizer"  # kopf's, as handlers/startup.py names it


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    env = os.environ
    try:
        released = asyncio.run(uninstall(
            namespace=env.get("POD_NAMESPACE") or "default",
            deployments=[d for d in env.get("PWO_UNINSTALL_DEPLOYMENTS", "").split(",") if d],
            pod_selector=env.get("PWO_UNINSTALL_POD_SELECTOR", ""),
            namespaces=[n.strip() for n in env.get("PWO_NAMESPACES", "").split(",") if n.strip()],
            timeout=float(env.get("PWO_UNINSTALL_TIMEOUT_SECONDS", "240")),
        ))
    except (ApiException, TimeoutError) as exc:
        log.error("uninstall: %s", exc if isinstance(exc, TimeoutError) else f"HTTP {exc.status} {exc.reason}")
        return 1
    log.info("uninstall: released %d policies", len(released))
    return 0


async def uninstall(*, namespace: str, deployments: list[str], pod_selector: str, namespaces: list[str],
                    timeout: float) -> list[str]:
    """Stop the operator (its Deployments deleted, its pods gone), then release the policies."""
    kube = KubeClient(await load_configuration())
    try:
        apps, core = AppsV1Api(kube.api), CoreV1Api(kube.api)
        for name in deployments:
            try:
                await apps.delete_namespaced_deployment(name, namespace, body=V1DeleteOptions(
                    propagation_policy="Foreground"), _request_timeout=REQUEST_SECONDS)
                log.info("uninstall: deleting Deployment %s/%s", namespace, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        deadline = time.monotonic() + timeout
        while pod_selector:
            pods = await core.list_namespaced_pod(namespace, label_selector=pod_selector,
                                                  _request_timeout=REQUEST_SECONDS)
            if not pods.items:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pods.items)} operator pod(s) still running after {timeout:.0f}s; "
                                   "policies keep their finalizer")
            await asyncio.sleep(1.0)
        released = await release_finalizers(kube, FINALIZER, namespaces, lambda _policy: True)
        for name in released:
            log.info("uninstall: released %s (finalizer removed)", name)
        return released
    finally:
        await kube.aclose()


async def release_finalizers(
    kube: KubeClient, finalizer: str, namespaces: Iterable[str], mine: Callable[[dict[str, Any]], bool],
) -> list[str]:
    """Remove ``finalizer`` from every policy ``mine`` accepts (in ``namespaces``; none = all).
    Each patch is a JSON patch pinned to the list it read (``test``), so a policy changed in
    between is skipped rather than losing another finalizer. Returns the policies released."""
    api = CustomObjectsApi(kube.api)
    released: list[str] = []
    scopes = list(namespaces) or [None]
    for namespace in scopes:
        if namespace is None:
            listing = await api.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=REQUEST_SECONDS)
        else:
            listing = await api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                              _request_timeout=REQUEST_SECONDS)
        for policy in listing.get("items", []):
            meta = policy.get("metadata", {})
            finalizers = list(meta.get("finalizers") or [])
            if finalizer not in finalizers or not mine(policy):
                continue
            index = finalizers.index(finalizer)
            patch = [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
                     {"op": "remove", "path": f"/metadata/finalizers/{index}"}]
            try:
                await api.patch_namespaced_custom_object(
                    GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch,
                    _content_type="application/json-patch+json", _request_timeout=REQUEST_SECONDS)
            except Exception as exc:  # one policy's failure must not keep the others'
                log.warning("uninstall: could not release %s/%s: %s", meta.get("namespace"), meta.get("name"),
                            type(exc).__name__)
                continue
            released.append(f"{meta['namespace']}/{meta['name']}")
    return released
