"""The operator's Secret cache (secret_cache.SecretCache) on a real API server: list+watch
per namespace (or per Secret), one GET for both keys of a Secret, a rotated or deleted Secret
seen without another GET, a broken watch resumed, GET as the fallback."""

from __future__ import annotations

import asyncio
import copy
import os
import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import yaml
from kubernetes.aio.client import Configuration
from kubernetes.aio.config import load_kube_config, load_kube_config_from_dict

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.secret_values import Use
from prefect_workpool_operator.kube.api import KubeClient, SecretError, credentials, load_configuration, read_secret_for
from prefect_workpool_operator.kube.secrets import SecretCache
from tests.support.names import unique
from tests.e2e.test_operator import secret
from tests.support.kubectl import Kubectl
from tests.support.cuttable_proxy import CuttableProxy

pytestmark = pytest.mark.e2e
KEYS = ("aws-access-key-id", "aws-secret-access-key")


async def kube_client(kubeconfig: str, server: str | None = None) -> KubeClient:
    configuration = Configuration()
    if server is None:
        await load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        config = copy.deepcopy(yaml.safe_load(pathlib.Path(kubeconfig).read_text()))
        config["clusters"][0]["cluster"]["server"] = server
        await load_kube_config_from_dict(config, client_configuration=configuration)
    return KubeClient(configuration)


@pytest.fixture
async def kube(kubectl: Kubectl) -> AsyncIterator[KubeClient]:
    client = await kube_client(kubectl.kubeconfig)
    yield client
    await client.aclose()


@pytest.fixture
async def secrets(kube: KubeClient) -> AsyncIterator[SecretCache]:
    cache = SecretCache(kube, fallback_seconds=600)
    yield cache
    await cache.aclose()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Wait for a condition (an async or plain callable returning a truthy value)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def aws_secret(ns: Kubectl, name: str, key_id: str, key: str) -> None:
    ns.apply(secret(name, KEYS[0], key_id))
    ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[1]}":"{key}"}}}}')


async def read_both(cache: SecretCache, namespace: str, name: str) -> list[str]:
    return list(await asyncio.gather(*(cache.read_secret_key(namespace, name, k) for k in KEYS)))


async def test_one_get_then_the_watch_serves_rotations_and_deletions(kubectl: Kubectl, namespace: str, secrets) -> None:
    ns = kubectl.in_namespace(namespace)
    name = unique("aws")
    aws_secret(ns, name, "AKIAFIRST", "first-secret")
    values = await asyncio.gather(*(secrets.read_secret_key(namespace, name, k) for k in KEYS * 10))
    assert values[:2] == ["AKIAFIRST", "first-secret"] and secrets.requests["get"] == 1
    await eventually(lambda: secrets.synced(namespace, name), "the namespace listed and watched")
    assert await read_both(secrets, namespace, name) == ["AKIAFIRST", "first-secret"]
    assert secrets.requests["get"] == 1 and secrets.requests["list"] == 1

    # Rotated: the next read has the new value, from the watch (no GET).
    ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIASECOND"}}}}')
    await eventually(lambda: _equals(secrets.read_secret_key(namespace, name, KEYS[0]), "AKIASECOND"), "rotation seen")
    assert secrets.requests["get"] == 1
    # A bad value is still answered SecretInvalid, from the watched copy.
    ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIA\\u0007BELL"}}}}')
    bad = await eventually(lambda: _error(read_secret_for(secrets, namespace, name, KEYS[0], Use.AWS_ACCESS_KEY_ID)),
                           "bad value seen")
    assert bad.reason == health.SECRET_INVALID and "BELL" not in bad.message and "AKIA" not in bad.message
    assert secrets.requests["get"] == 1

    # Deleted: SecretNotFound (the deletion drops the copy; the read confirms with one GET).
    ns("delete", "secret", name)
    err = await eventually(lambda: _error(secrets.read_secret_key(namespace, name, KEYS[0])), "deletion seen")
    assert err.reason == health.SECRET_NOT_FOUND
    # Made again: read at once (a failed read is never cached).
    aws_secret(ns, name, "AKIATHIRD", "third-secret")
    assert await read_both(secrets, namespace, name) == ["AKIATHIRD", "third-secret"]


async def _equals(read: Any, expected: str) -> bool:
    return await read == expected


async def _error(read: Any) -> SecretError | None:
    try:
        await read
    except SecretError as exc:
        return exc
    return None


async def test_a_failed_read_is_not_cached(kubectl: Kubectl, namespace: str, secrets) -> None:
    name = unique("late")
    with pytest.raises(SecretError) as err:
        await secrets.read_secret_key(namespace, name, "token")
    assert err.value.reason == health.SECRET_NOT_FOUND
    kubectl.in_namespace(namespace).apply(secret(name, "token", "now-there"))
    assert await secrets.read_secret_key(namespace, name, "token") == "now-there"
    gets = secrets.requests["get"]
    with pytest.raises(SecretError) as missing_key:
        await secrets.read_secret_key(namespace, name, "other")  # from the copy: the key is not there
    assert missing_key.value.reason == health.SECRET_KEY_NOT_FOUND and secrets.requests["get"] == gets


async def test_only_read_secrets_and_keys_are_kept(kubectl: Kubectl, namespace: str, secrets) -> None:
    ns = kubectl.in_namespace(namespace)
    used, other = unique("used"), unique("other")
    aws_secret(ns, used, "AKIAUSED", "used-secret")
    aws_secret(ns, other, "AKIAOTHER", "other-secret")
    assert await secrets.read_secret_key(namespace, used, KEYS[0]) == "AKIAUSED"
    await eventually(lambda: secrets.synced(namespace, used), "watching")
    ns.run("patch", "secret", other, "--type=merge", "-p", '{"stringData":{"x":"y"}}')
    ns.run("patch", "secret", used, "--type=merge", "-p", '{"stringData":{"x":"z"}}')
    await eventually(lambda: "x" in secrets._secrets[(namespace, used)].keys, "the change to the used Secret")
    assert set(secrets._secrets) == {(namespace, used)}  # the other Secret was parsed and dropped
    assert set(secrets._secrets[(namespace, used)].values) == {KEYS[0]}  # only the key read
    # A key not read before costs one GET, then it is kept too.
    assert await secrets.read_secret_key(namespace, used, KEYS[1]) == "used-secret"
    assert await secrets.read_secret_key(namespace, used, KEYS[1]) == "used-secret"
    assert secrets.requests["get"] == 2


async def test_a_broken_watch_resumes_and_a_dead_one_falls_back_to_get(kubectl: Kubectl, namespace: str) -> None:
    ns = kubectl.in_namespace(namespace)
    name = unique("aws")
    aws_secret(ns, name, "AKIAFIRST", "first-secret")
    server = urllib.parse.urlsplit(yaml.safe_load(pathlib.Path(kubectl.kubeconfig).read_text())
                                   ["clusters"][0]["cluster"]["server"])
    proxy = CuttableProxy(server.hostname or "127.0.0.1", server.port or 443)
    kube = await kube_client(kubectl.kubeconfig, await proxy.start())
    cache = SecretCache(kube, fallback_seconds=600)
    try:
        assert await cache.read_secret_key(namespace, name, KEYS[0]) == "AKIAFIRST"
        await eventually(lambda: cache.synced(namespace, name), "watching")
        watches = cache.requests["watch"]

        # Broken: every connection dropped. A change made meanwhile is seen once the watch
        # resumes from its resourceVersion (no new list), and no GET is needed.
        proxy.reset()
        ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIASECOND"}}}}')
        await eventually(lambda: cache.requests["watch"] > watches and cache.synced(namespace, name), "watch resumed", 30)
        await eventually(lambda: _equals(cache.read_secret_key(namespace, name, KEYS[0]), "AKIASECOND"), "change seen")
        assert cache.requests["list"] == 1 and cache.requests["get"] == 1

        # Cut off (a black hole): once the watch is known dead, reads fall back to GET.
        proxy.cut()
        await eventually(lambda: not cache.synced(namespace, name), "watch noticed dead", 30)
        gets = cache.requests["get"]
        assert (await _error(cache.read_secret_key(namespace, name, KEYS[0]))) is None  # the copy is recent
        cache._secrets[(namespace, name)].confirmed -= 600  # as if confirmed longer ago than the fallback
        err = await _error(cache.read_secret_key(namespace, name, KEYS[0]))
        assert err is not None and err.reason == health.SECRET_UNREADABLE and cache.requests["get"] == gets + 1
    finally:
        await cache.aclose()
        await kube.aclose()
        await proxy.close()


def compact_etcd(kubeconfig: str) -> int:
    """Compact the control plane's etcd up to its current revision (what the API server does
    every 5 minutes): every older resourceVersion is gone from its history."""
    import base64
    import json
    import urllib.request

    etcd = (pathlib.Path(kubeconfig).parent / "etcd-url").read_text().strip()

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(etcd + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


async def test_a_watch_resumed_from_a_compacted_version_lists_again(tmp_path: pathlib.Path) -> None:
    """A watch that resumes after its resourceVersion was compacted away (a long disconnection)
    is answered 410 Gone by a real API server; the cache lists again and serves what changed
    meanwhile, without a GET. Its own control plane, without the watch cache: with it, the API
    server answers old versions from memory until enough events have passed through it."""
    from sandbox.kube import LocalControlPlane

    with LocalControlPlane(tmp_path / "kube", apiserver_args=("--watch-cache=false",)) as plane:
        ns = Kubectl(plane.kubeconfig).in_namespace("default")
        name = unique("aws")
        aws_secret(ns, name, "AKIAFIRST", "first-secret")
        server = urllib.parse.urlsplit(plane.server)
        proxy = CuttableProxy(server.hostname or "127.0.0.1", server.port or 443)
        kube = await kube_client(str(plane.kubeconfig), await proxy.start())
        cache = SecretCache(kube, fallback_seconds=600)
        try:
            assert await cache.read_secret_key("default", name, KEYS[0]) == "AKIAFIRST"
            await eventually(lambda: cache.synced("default", name), "watching")
            scope = cache._scopes[("default", None)]
            listed_at = scope.resource_version
            assert cache.requests["list"] == 1 and listed_at is not None
            ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIASECOND"}}}}')
            await eventually(lambda: _equals(cache.read_secret_key("default", name, KEYS[0]), "AKIASECOND"), "seen")
            ns.apply(secret(unique("other"), "k", "v"))  # one more revision: the watch's next one is compacted too
            assert compact_etcd(str(plane.kubeconfig)) > int(listed_at) + 1
            # As after a long disconnection: the watch resumes from the list's version, compacted since.
            scope.resource_version = listed_at
            proxy.reset()
            ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIATHIRD"}}}}')
            await eventually(lambda: cache.requests["list"] == 2 and cache.synced("default", name), "listed again", 30)
            await eventually(lambda: _equals(cache.read_secret_key("default", name, KEYS[0]), "AKIATHIRD"), "seen")
            assert cache.requests["get"] == 1

            # Compacted right at the watch's next revision: the server answers 500 ("PrevKv=nil")
            # at every retry from that version. After a few, the cache lists afresh.
            before = scope.resource_version
            ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIAFOURTH"}}}}')
            await eventually(lambda: scope.resource_version != before, "the change seen by the watch")
            compact_etcd(str(plane.kubeconfig))
            scope.resource_version = before
            proxy.reset()
            await eventually(lambda: cache.requests["list"] == 3 and cache.synced("default", name), "listed again", 30)
            assert await cache.read_secret_key("default", name, KEYS[0]) == "AKIAFOURTH"
        finally:
            await cache.aclose()
            await kube.aclose()
            await proxy.close()


async def test_a_scope_no_policy_reads_any_more_stops_its_watch(kubectl: Kubectl, namespace: str,
                                                               kube: KubeClient) -> None:
    """A policy deleted (or pointed elsewhere) stops reading its Secret: once none of a scope's
    Secrets was read for ``idle_seconds`` its watch ends and nothing it kept stays in memory;
    a later read starts it again."""
    ns = kubectl.in_namespace(namespace)
    name = unique("aws")
    aws_secret(ns, name, "AKIAFIRST", "first-secret")
    cache = SecretCache(kube, fallback_seconds=600, idle_seconds=2.0)
    try:
        assert await cache.read_secret_key(namespace, name, KEYS[0]) == "AKIAFIRST"
        await eventually(lambda: cache.synced(namespace, name), "watching")
        task = cache._scopes[(namespace, None)].task
        for _ in range(4):  # read every half second, as a policy's cycles would: the watch stays
            await asyncio.sleep(0.5)
            assert await cache.read_secret_key(namespace, name, KEYS[0]) == "AKIAFIRST"
            assert cache.watching(namespace, name)
        await eventually(lambda: not cache.watching(namespace, name), "the idle scope stopped", 10)
        await eventually(lambda: task is not None and task.done(), "its watch ended", 10)
        assert (namespace, name) not in cache._secrets
        assert await cache.read_secret_key(namespace, name, KEYS[0]) == "AKIAFIRST"
        await eventually(lambda: cache.synced(namespace, name), "watching again")
        assert cache.requests["list"] == 2
    finally:
        await cache.aclose()


async def test_per_secret_watches_and_no_watch(kubectl: Kubectl, namespace: str, kube: KubeClient) -> None:
    ns = kubectl.in_namespace(namespace)
    name = unique("aws")
    aws_secret(ns, name, "AKIAFIRST", "first-secret")
    by_name = SecretCache(kube, mode="name", fallback_seconds=600)
    off = SecretCache(kube, mode="off", fallback_seconds=0)
    try:
        assert await read_both(by_name, namespace, name) == ["AKIAFIRST", "first-secret"]
        await eventually(lambda: by_name.synced(namespace, name), "watching the one Secret")
        ns.run("patch", "secret", name, "--type=merge", "-p", f'{{"stringData":{{"{KEYS[0]}":"AKIASECOND"}}}}')
        await eventually(lambda: _equals(by_name.read_secret_key(namespace, name, KEYS[0]), "AKIASECOND"), "rotation")
        assert by_name.requests["get"] == 1
        # mode off, no cache time: a GET for every read, and no watch at all.
        assert await off.read_secret_key(namespace, name, KEYS[0]) == "AKIASECOND"
        assert await off.read_secret_key(namespace, name, KEYS[0]) == "AKIASECOND"
        assert off.requests == {"get": 2}
    finally:
        await by_name.aclose()
        await off.aclose()


async def test_kopf_logs_in_with_the_same_credentials(kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", os.fspath(kubectl.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    configuration = await load_configuration()
    info = await credentials(configuration)
    user = yaml.safe_load(pathlib.Path(kubectl.kubeconfig).read_text())["users"][0]["user"]
    assert info["server"] == configuration.host and info["token"] == user["token"]
    assert info["scheme"].lower() == "bearer" and info["ca_path"] and not info["insecure"]
