"""The clients one policy's cycle talks through, built from its spec and Secrets and kept
between cycles: a Prefect client (its auth header read from a Secret) and an AWS client
(static keys from a Secret, or the pod's identity). Each is rebuilt only when what it
was built from changes; identities are compared by digest, never kept in clear."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import httpx

from prefect_workpool_operator.aws import AwsClient, AwsCredentials
from prefect_workpool_operator.core.secret_values import Use
from prefect_workpool_operator.kube.api import SecretReader, read_secret_for
from prefect_workpool_operator.schema.models import EcsTarget, PolicySpec
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.http import PrefectHttp


@dataclass
class PrefectConnection:
    """A policy's Prefect client, and the generation whose work queues were checked."""

    client: PrefectClient | None = None
    key: str | None = None
    queues_checked_generation: int | None = None


@dataclass
class AwsConnection:
    """A policy's AWS client, and what its request counter showed at the last report."""

    client: AwsClient | None = None
    key: str | None = None
    reported_calls: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def take_call_counts(self) -> dict[str, int]:
        """AWS requests since the last call (the client's counter only grows)."""
        if self.client is None:
            return {}
        now = dict(self.client.calls)
        delta = {op: n - self.reported_calls.get(op, 0) for op, n in now.items()}
        self.reported_calls = now
        return delta


async def prefect_client_for(
    spec: PolicySpec, namespace: str, secrets: SecretReader, http: httpx.AsyncClient | PrefectHttp,
    connection: PrefectConnection,
) -> PrefectClient:
    """Reuse the policy's client until its URL, credentials or timeout change."""
    auth_header = await _auth_header(spec, namespace, secrets)
    digest = hashlib.sha256(f"{spec.prefect.api_url}\n{auth_header}\n{spec.prefect.request_timeout}".encode()).hexdigest()
    if connection.client is None or connection.key != digest:
        connection.client = PrefectClient(
            http, spec.prefect.api_url, auth_header=auth_header, timeout=spec.request_timeout_seconds
        )
        connection.key = digest
    return connection.client


async def _auth_header(spec: PolicySpec, namespace: str, secrets: SecretReader) -> str | None:
    auth = spec.prefect.auth
    if auth is None:
        return None
    if auth.api_key_secret_ref is not None:
        ref = auth.api_key_secret_ref
        return f"Bearer {await read_secret_for(secrets, namespace, ref.name, ref.key, Use.API_KEY)}"
    if auth.basic_auth_secret_ref is not None:
        ref = auth.basic_auth_secret_ref
        value = await read_secret_for(secrets, namespace, ref.name, ref.key, Use.BASIC_AUTH)
        return "Basic " + base64.b64encode(value.encode()).decode()
    return None


async def aws_client_for(ecs: EcsTarget, namespace: str, secrets: SecretReader, connection: AwsConnection) -> AwsClient:
    """The policy's AWS client, rebuilt when region, endpoint, credentials or budget change;
    its call budget is refilled for this cycle."""
    credentials = None
    ref = ecs.credentials_secret_ref
    if ref is not None:
        credentials = AwsCredentials(
            await read_secret_for(secrets, namespace, ref.name, ref.access_key_id_key, Use.AWS_ACCESS_KEY_ID),
            await read_secret_for(secrets, namespace, ref.name, ref.secret_access_key_key, Use.AWS_SECRET_ACCESS_KEY),
            await read_secret_for(secrets, namespace, ref.name, ref.session_token_key, Use.AWS_SESSION_TOKEN)
            if ref.session_token_key else None,
        )
    material = f"{ecs.region}\n{ecs.endpoint_url}\n{ecs.max_calls_per_cycle}\n" + "\n".join(
        credentials.secrets() if credentials else []
    )
    key = hashlib.sha256(material.encode()).hexdigest()
    if connection.client is None or connection.key != key:
        connection.close()
        connection.client = AwsClient(
            ecs.region, endpoint_url=ecs.endpoint_url, credentials=credentials, calls_per_cycle=ecs.max_calls_per_cycle
        )
        connection.key = key
        connection.reported_calls = {}
    connection.client.start_cycle()
    return connection.client
