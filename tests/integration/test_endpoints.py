"""Endpoints that answer but are not what they claim: real loopback servers, not fakes of Prefect or AWS."""

from __future__ import annotations

import time

import httpx
import pytest

from prefect_workpool_operator.aws import AWS_ENDPOINT_INVALID, AwsClient, AwsCredentials, AwsError
from prefect_workpool_operator.core import health
from prefect_workpool_operator.prefect.client import PrefectClient
from prefect_workpool_operator.prefect.rest import PrefectError
from sandbox.prefect_seed import utcnow
from tests.support.loopback import hanging, serving

# (page, fragment of the message: what was received)
NOT_PREFECT = [
    ("html", "HTTP 200 (text/html)"),
    ("foreign-json", "HTTP 200 (application/json)"),
    ("login-page", "HTTP 200 (text/html)"),
    ("redirect", "HTTP 302 (text/html) redirecting to sso.example.com/login"),
    ("not-found-html", "HTTP 404 (text/html)"),
]


@pytest.mark.parametrize(("page", "fragment"), NOT_PREFECT)
async def test_api_url_that_is_not_prefect(page: str, fragment: str) -> None:
    async with httpx.AsyncClient() as http:
        with serving(page) as url:
            client = PrefectClient(http, url + "/api", attempts=1)
            with pytest.raises(PrefectError) as err:
                await client.observe_pool("p", [], utcnow())
    assert err.value.reason == health.NOT_PREFECT_API, err.value.message
    assert fragment in err.value.message
    assert "token=abc" not in err.value.message  # a redirect's query string is not repeated


@pytest.mark.parametrize("page", ["html", "login-page", "not-found-html"])
async def test_aws_endpoint_answering_html(page: str) -> None:
    with serving(page) as url:
        client = AwsClient("us-east-1", endpoint_url=url, credentials=AwsCredentials("AKIAHTMLTEST00000001", "s" * 20),
                           max_attempts=1)
        try:
            with pytest.raises(AwsError) as err:
                await client.describe_service("cluster", "service")
        finally:
            client.close()
    assert err.value.reason == AWS_ENDPOINT_INVALID, err.value.message
    assert "text/html" in err.value.message and "AKIAHTMLTEST" not in err.value.message


async def test_hung_server_is_bounded_by_the_request_timeout() -> None:
    async with httpx.AsyncClient() as http:
        with hanging() as url:
            client = PrefectClient(http, url + "/api", timeout=1.0, attempts=2, backoff=0.05)
            started = time.monotonic()
            with pytest.raises(PrefectError) as err:
                await client.observe_pool("p", [], utcnow())
    assert err.value.reason == health.UNREACHABLE
    assert time.monotonic() - started < 2 * 1.0 + 2  # attempts x timeout, plus backoff and slack
