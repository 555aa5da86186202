"""Reads Secrets from the Kubernetes API with the credentials kopf logged in with.

kopf brings no general-purpose client, and the operator needs exactly one read
(a Secret key), so a small httpx client over kopf's ``ConnectionInfo`` does it
rather than a second Kubernetes library. Secret values never leave this module
except as the return value of ``read_secret_key``.

A Secret read is cached for ``cache_seconds`` (whole Secret, so the AWS key id and
secret key cost one GET together), which makes the steady state cost no Kubernetes
requests for Secrets. ``forget`` drops an entry early, e.g. when the credentials it
held were refused; a failed read is never cached.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import tempfile
import time
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from .core import health
from .core.errors import OperatorError
from .core.secret_values import SecretValueError, Use, check_secret, decode_secret


class SecretReader(Protocol):
    """What a cycle needs from Kubernetes: one key of a Secret (KubernetesSecrets below)."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str: ...


class SecretError(OperatorError):
    """A Secret could not be read (SecretNotFound, SecretKeyNotFound, ...)."""


class KubernetesSecrets:
    """Reads one key of a Secret in a namespace."""

    def __init__(self, http: httpx.AsyncClient, server: str, *, cache_seconds: float = 0.0) -> None:
        self._http = http
        self._server = server.rstrip("/")
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[dict[str, str]]] = {}
        self.gets = 0  # GET requests sent (for tests and the benchmark)

    @classmethod
    def from_connection(cls, info: Any, *, cache_seconds: float = 0.0) -> KubernetesSecrets:
        """Build from a kopf ``ConnectionInfo`` (token, basic, or client-certificate auth)."""
        return cls(client_for(info), info.server, cache_seconds=cache_seconds)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        data = await self._secret_data(namespace, name)
        where = f"Secret {namespace}/{name}"
        if key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise SecretError(health.SECRET_KEY_NOT_FOUND, f"{where} has no key {key!r} (keys: {keys})")
        try:
            return decode_secret(base64.b64decode(data[key]))
        except (SecretValueError, ValueError) as exc:  # ValueError: not base64 (never from a real API server)
            raise SecretError(health.SECRET_INVALID, f"{where} key {key!r} {_problem(exc)}") from None

    def forget(self, namespace: str, name: str) -> None:
        self._cache.pop((namespace, name), None)

    async def _secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's data (base64 values), from the cache while fresh; one GET for concurrent readers."""
        entry = self._cache.get((namespace, name))
        if entry is not None and time.monotonic() < entry[0]:
            return entry[1]
        pending = self._reading.get((namespace, name))
        if pending is not None and not pending.cancelled():
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self._reading[(namespace, name)] = future
        try:
            data = await self._get(namespace, name)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        else:
            future.set_result(data)
        finally:
            if self._reading.get((namespace, name)) is future:
                del self._reading[(namespace, name)]
        if self._cache_seconds > 0:
            self._cache[(namespace, name)] = (time.monotonic() + self._cache_seconds, data)
        return data

    async def _get(self, namespace: str, name: str) -> dict[str, str]:
        url = f"{self._server}/api/v1/namespaces/{quote(namespace, safe='')}/secrets/{quote(name, safe='')}"
        where = f"Secret {namespace}/{name}"
        self.gets += 1
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} could not be read: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise SecretError(health.SECRET_NOT_FOUND, f"{where} does not exist")
        if response.status_code == 403:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} is not readable by the operator (RBAC: 403)")
        if response.status_code != 200:
            raise SecretError(health.SECRET_UNREADABLE, f"{where} could not be read: HTTP {response.status_code}")
        return dict(response.json().get("data") or {})

    async def aclose(self) -> None:
        await self._http.aclose()


def client_for(info: Any, timeout: float = 10.0) -> httpx.AsyncClient:
    """An httpx client with a kopf ``ConnectionInfo``'s credentials (token, basic or client certificate)."""
    context = ssl.create_default_context()
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=_pem(info.ca_data))
    if info.certificate_path or info.certificate_data:
        _load_client_cert(context, info)
    headers = {}
    if info.token:
        headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
    auth = httpx.BasicAuth(info.username, info.password) if info.username and info.password else None
    return httpx.AsyncClient(verify=context, headers=headers, auth=auth, timeout=timeout)


async def read_secret_for(secrets: SecretReader, namespace: str, name: str, key: str, use: Use) -> str:
    """A Secret key's value, checked for its use (header, AWS credential): SecretInvalid otherwise."""
    value = await secrets.read_secret_key(namespace, name, key)
    try:
        return check_secret(value, use)
    except SecretValueError as exc:
        raise SecretError(health.SECRET_INVALID, f"Secret {namespace}/{name} key {key!r} {exc}") from None


def _problem(exc: ValueError) -> str:
    return str(exc) if isinstance(exc, SecretValueError) else "is not base64"


def _pem(data: str | bytes) -> str:
    """kubeconfig's *-data fields are base64 of PEM; ConnectionInfo may carry either."""
    raw = data.encode() if isinstance(data, str) else data
    return raw.decode() if raw.lstrip().startswith(b"-----") else base64.b64decode(raw).decode()


def _load_client_cert(context: ssl.SSLContext, info: Any) -> None:
    # ssl wants files; write in-memory data to private temp files, load, delete.
    if info.certificate_path:
        context.load_cert_chain(os.fsdecode(info.certificate_path), os.fsdecode(info.private_key_path))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        for path, data in ((cert, info.certificate_data), (key, info.private_key_data)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(_pem(data))
        context.load_cert_chain(cert, key)
