"""No credential reaches a log at any level: botocore at DEBUG, httpx URLs at INFO."""

from __future__ import annotations

import logging

import pytest

from prefect_workpool_operator.aws import AwsClient, AwsCredentials, AwsError
from prefect_workpool_operator.config import quiet_libraries

KEY_ID = "AKIAQUIETLOGS0000001"
SECRET = "quiet-logs-secret-access-key-0001"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(record.getMessage())


@pytest.fixture
def debug_root():
    root = logging.getLogger()
    capture = Capture()
    old_level = root.level
    saved = {name: logging.getLogger(name).level for name in ("botocore", "boto3", "urllib3", "httpx", "httpcore")}
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    for name in saved:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield capture
    root.removeHandler(capture)
    root.setLevel(old_level)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


async def _call_moto(moto) -> None:
    client = AwsClient("us-east-1", endpoint_url=moto.endpoint_url, credentials=AwsCredentials(KEY_ID, SECRET))
    try:
        with pytest.raises(AwsError):
            await client.describe_service("no-such-cluster", "svc")
    finally:
        client.close()


async def test_botocore_debug_output_never_reaches_the_log(moto, debug_root) -> None:
    # Without the guard the key id is in botocore's DEBUG output: the check below can fail.
    await _call_moto(moto)
    assert any(KEY_ID in line for line in debug_root.text), "botocore logged no key id: this test proves nothing"

    debug_root.text.clear()
    quiet_libraries()
    await _call_moto(moto)
    joined = "\n".join(debug_root.text)
    assert KEY_ID not in joined and SECRET not in joined


async def test_info_lines_never_carry_long_urls(debug_root) -> None:
    import httpx

    from tests.support.loopback import serving

    quiet_libraries()
    logging.getLogger().setLevel(logging.INFO)
    token = "x" * 4000  # a page token, as the events API's next-page links carry
    async with httpx.AsyncClient() as http:
        with serving("foreign-json") as url:
            await http.get(f"{url}/api/events/filter/next?page-token={token}")
    assert all(len(line) < 1000 for line in debug_root.text), [line[:80] for line in debug_root.text]
