"""Kubernetes calls beyond kopf, through the official client's asyncio API (``kubernetes.aio``).

One login source: ``load_configuration`` (the in-cluster ServiceAccount, whose token the
library re-reads every minute, else the kubeconfig). kopf's login handler derives its own
credentials from the same Configuration (``credentials``), and ``KubeClient`` holds the one
``ApiClient`` that the Secret cache (``secret_cache``) and the Lease elector (``leader``) share.
Nothing here imports kopf.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable
from typing import Any, Protocol

from kubernetes.aio.client import ApiClient, Configuration
from kubernetes.aio.config import ConfigException, load_incluster_config, load_kube_config

from prefect_workpool_operator.core import health
from prefect_workpool_operator.core.errors import OperatorError
from prefect_workpool_operator.core.secret_values import SecretValueError, Use, check_secret


class SecretReader(Protocol):
    """What a cycle needs from Kubernetes: one key of a Secret (secret_cache.SecretCache)."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...


class SecretError(OperatorError):
    """A Secret could not be read (SecretNotFound, SecretKeyNotFound, ...). Never holds a value."""


async def read_secret_for(secrets: SecretReader, namespace: str, name: str, key: str, use: Use) -> str:
    """A Secret key's value, checked for its use (header, AWS credential): SecretInvalid otherwise."""
    value = await secrets.read_secret_key(namespace, name, key)
    try:
        return check_secret(value, use)
    except SecretValueError as exc:
        raise SecretError(health.SECRET_INVALID, f"Secret {namespace}/{name} key {key!r} {exc}") from None


async def load_configuration() -> Configuration:
    """The in-cluster ServiceAccount, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    configuration = Configuration()
    try:
        load_incluster_config(client_configuration=configuration)
    except ConfigException:
        # $KUBECONFIG read now: the library reads it once, when it is imported.
        await load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    return configuration


async def credentials(configuration: Configuration) -> dict[str, Any]:
    """A Configuration as kopf's ``ConnectionInfo`` fields, so kopf logs in with the same identity."""
    header = await configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
    scheme, _, token = (header or "").strip().rpartition(" ")
    return {
        "server": configuration.host,
        "ca_path": configuration.ssl_ca_cert,
        "insecure": not configuration.verify_ssl,
        "scheme": (scheme or "Bearer") if token else None,
        "token": token or None,
        "certificate_path": configuration.cert_file,
        "private_key_path": configuration.key_file,
        "username": configuration.username or None,
        "password": configuration.password or None,
    }


def api_client(configuration: Configuration) -> ApiClient:
    """An ApiClient that never retries on its own (every caller has its own deadline and retry
    rule) and has no connection cap: each Secret watch holds a connection for as long as it
    runs, and a cap (the library's default is 100) would leave Lease renewals waiting behind them."""
    configuration.retries = None
    configuration.client_go_retries = False
    configuration.connection_pool_maxsize = 0  # aiohttp: no limit
    return ApiClient(configuration)


async def read_json(call: Awaitable[Any]) -> tuple[int, dict[str, Any] | None]:
    """One read through a ``*_without_preload_content`` call: (HTTP status, the object when
    200). Connection errors propagate: each caller names them in its own terms."""
    response = await call
    async with response:
        if response.status != 200:
            return response.status, None
        return 200, json.loads(await response.read())


class KubeClient:
    """The operator's one ApiClient; ``use`` swaps it when kopf logs in again (new credentials)."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        self.api = api_client(configuration)
        self._closing: set[asyncio.Task[None]] = set()

    def use(self, configuration: Configuration) -> None:
        """From the next request on, the new credentials; the old client closes once idle."""
        if configuration is self.configuration:
            return
        old, self.configuration, self.api = self.api, configuration, api_client(configuration)
        task = asyncio.ensure_future(old.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        await self.api.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
