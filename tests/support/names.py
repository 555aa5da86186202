"""Names the tests share: the basic-auth string of the Prefect servers that need one, and
unique object names (tests share servers and clusters)."""

from __future__ import annotations

import uuid

BASIC_AUTH = "operator:s3cr3t-pass"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
