"""The operator's Secret reader (kube_api.KubernetesSecrets) on a real API server: one GET
per Secret while cached, both keys from one read, a refused credential read again."""

from __future__ import annotations

import asyncio
import os

import kopf
import pytest

from prefect_workpool_operator.core import health
from prefect_workpool_operator.kube_api import KubernetesSecrets, SecretError
from tests.conftest import unique
from tests.e2e.test_operator import secret
from tests.kubectl import Kubectl

pytestmark = pytest.mark.e2e


@pytest.fixture
async def secrets(kubectl: Kubectl, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", os.fspath(kubectl.kubeconfig))
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    reader = KubernetesSecrets.from_connection(info, cache_seconds=600)
    yield reader
    await reader.aclose()


async def test_both_keys_come_from_one_get_and_stay_cached(kubectl: Kubectl, namespace: str, secrets) -> None:
    ns = kubectl.in_namespace(namespace)
    name = unique("aws")
    ns.apply(secret(name, "aws-access-key-id", "AKIAFIRST"))
    ns.run("patch", "secret", name, "--type=merge", "-p", '{"stringData":{"aws-secret-access-key":"first-secret"}}')
    values = await asyncio.gather(*(secrets.read_secret_key(namespace, name, key)
                                    for key in ("aws-access-key-id", "aws-secret-access-key") * 10))
    assert values[:2] == ["AKIAFIRST", "first-secret"] and secrets.gets == 1

    ns.run("patch", "secret", name, "--type=merge", "-p", '{"stringData":{"aws-access-key-id":"AKIASECOND"}}')
    assert await secrets.read_secret_key(namespace, name, "aws-access-key-id") == "AKIAFIRST"  # cached
    assert secrets.gets == 1
    secrets.forget(namespace, name)  # what the operator does when the credentials are refused
    assert await secrets.read_secret_key(namespace, name, "aws-access-key-id") == "AKIASECOND"
    assert secrets.gets == 2


async def test_a_failed_read_is_not_cached(kubectl: Kubectl, namespace: str, secrets) -> None:
    name = unique("late")
    with pytest.raises(SecretError) as err:
        await secrets.read_secret_key(namespace, name, "token")
    assert err.value.reason == health.SECRET_NOT_FOUND
    kubectl.in_namespace(namespace).apply(secret(name, "token", "now-there"))
    assert await secrets.read_secret_key(namespace, name, "token") == "now-there"
    with pytest.raises(SecretError) as missing_key:
        await secrets.read_secret_key(namespace, name, "other")  # from the cache: the key is not there
    assert missing_key.value.reason == health.SECRET_KEY_NOT_FOUND and secrets.gets == 2
