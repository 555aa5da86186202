"""AWS clients shared across policies (aws.SharedBotoClients) against moto."""

from __future__ import annotations

import pytest

from prefect_workpool_operator.aws import AwsClient, AwsCredentials, SharedBotoClients
from sandbox.moto_server import MotoServer
from tests.support.ecs_sandbox import REGION, EcsSandbox

pytestmark = pytest.mark.integration

KEY_A = AwsCredentials("AKIAAAAAAAAAAAAAAAAA", "secret-of-policy-a-0123456789")
KEY_B = AwsCredentials("AKIABBBBBBBBBBBBBBBB", "secret-of-policy-b-0123456789")


async def test_policies_with_one_identity_share_one_client_and_count_their_own_calls(
    sandbox: EcsSandbox, moto: MotoServer
) -> None:
    shared = SharedBotoClients()
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    one, two = (AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=KEY_A, shared=shared) for _ in range(2))
    other = AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=KEY_B, shared=shared)
    await one.describe_service(cluster, service)
    await two.describe_service(cluster, service)
    await two.describe_service(cluster, service)
    await other.describe_service(cluster, service)
    assert len(shared) == 2  # one ECS client per identity, not per policy
    assert one.calls == {"DescribeServices": 1} and two.calls == {"DescribeServices": 2}
    assert other.calls == {"DescribeServices": 1} and two.budget.used == 2
    text = repr(shared)
    assert all(secret not in text for key in (KEY_A, KEY_B) for secret in key.secrets())

    one.close()
    assert len(shared) == 2  # still used by the second policy
    await two.describe_service(cluster, service)  # and still working for it
    two.close()
    assert len(shared) == 1
    other.close()
    assert len(shared) == 0


async def test_a_new_region_or_endpoint_gets_its_own_client(sandbox: EcsSandbox, moto: MotoServer) -> None:
    shared = SharedBotoClients()
    cluster = sandbox.cluster()
    here = AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=KEY_A, shared=shared)
    there = AwsClient("eu-west-1", endpoint_url=moto.endpoint_url, credentials=KEY_A, shared=shared)
    await here.describe_service(cluster, sandbox.service(cluster))
    with pytest.raises(Exception):
        await there.describe_service(cluster, "prefect-worker")  # no such cluster in eu-west-1
    assert len(shared) == 2
    here.close()
    there.close()


async def test_identities_share_one_botocore_client_and_each_request_is_signed_with_its_own_keys(
    sandbox: EcsSandbox, moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPODPODPODPODPODP")  # the pod's identity (default chain)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-of-the-pod-0123456789")
    shared = SharedBotoClients()
    cluster = sandbox.cluster()
    service = sandbox.service(cluster)
    a = AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=KEY_A, shared=shared)
    b = AwsClient(REGION, endpoint_url=moto.endpoint_url, credentials=KEY_B, shared=shared)
    pod = AwsClient(REGION, endpoint_url=moto.endpoint_url, shared=shared)  # the default chain (env keys here)
    signed: list[str] = []
    for client in (a, b):
        await client.describe_service(cluster, service)  # creates the shared client
    botocore_client = a._client("ecs")
    assert botocore_client is b._client("ecs") and shared.botocore_clients == 1
    botocore_client.meta.events.register(
        "before-send", lambda request, **_: signed.append(str(request.headers["Authorization"])))
    await a.describe_service(cluster, service)
    await b.describe_service(cluster, service)
    await a.describe_service(cluster, service)
    key_ids = [header.split("Credential=")[1].split("/")[0] for header in signed]
    assert key_ids == [KEY_A.access_key_id, KEY_B.access_key_id, KEY_A.access_key_id]
    await pod.describe_service(cluster, service)
    assert pod.calls == {"DescribeServices": 1} and a.calls == {"DescribeServices": 3}
    assert shared.botocore_clients == 2  # the pod's identity keeps a client of its own
    assert pod._client("ecs") is not botocore_client
    for client in (a, b, pod):
        client.close()
    assert len(shared) == 0 and shared.botocore_clients == 0
