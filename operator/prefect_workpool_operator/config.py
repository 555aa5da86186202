"""Operator settings from environment variables (the Helm chart sets them).

Each variable is documented here, where it is read, and in docs/configuration.md.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

# Libraries whose DEBUG output carries credentials (botocore logs signed headers and
# access key ids) or whose INFO lines carry whole URLs (httpx: page tokens): held at
# WARNING whatever the operator's own verbosity, so no credential reaches a log.
QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "hpack")


@dataclass(frozen=True)
class OperatorConfig:
    # PWO_NAMESPACES: comma-separated namespaces to watch; empty = the whole cluster.
    namespaces: tuple[str, ...]
    # PWO_TICK_SECONDS: how often each policy's timer wakes to check whether its
    # spec.interval has passed; bounds how late a cycle can start.
    tick_seconds: float
    # PWO_LIVENESS_ENDPOINT: kopf liveness probe endpoint, e.g. http://0.0.0.0:8080/healthz.
    liveness_endpoint: str | None
    # PWO_PEERING: kopf peering name for one active replica per namespace set; empty = standalone.
    peering: str | None
    # PWO_LOG_FORMAT: plain | full | json.
    log_format: str
    # PWO_VERBOSE: 1 for debug logs.
    verbose: bool
    # PWO_METRICS_PORT: Prometheus /metrics port; 0 turns the endpoint off.
    metrics_port: int = 8080


def load_config(env: dict[str, str] | None = None) -> OperatorConfig:
    env = dict(os.environ if env is None else env)
    namespaces = tuple(n.strip() for n in env.get("PWO_NAMESPACES", "").split(",") if n.strip())
    tick = float(env.get("PWO_TICK_SECONDS", "5"))
    if tick <= 0:
        raise ValueError("PWO_TICK_SECONDS must be positive")
    log_format = env.get("PWO_LOG_FORMAT", "plain").lower()
    if log_format not in {"plain", "full", "json"}:
        raise ValueError("PWO_LOG_FORMAT must be plain, full or json")
    return OperatorConfig(
        namespaces=namespaces,
        tick_seconds=tick,
        liveness_endpoint=env.get("PWO_LIVENESS_ENDPOINT") or None,
        peering=env.get("PWO_PEERING") or None,
        log_format=log_format,
        verbose=env.get("PWO_VERBOSE", "") in {"1", "true", "yes"},
        metrics_port=_port(env.get("PWO_METRICS_PORT", "8080")),
    )


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("PWO_METRICS_PORT must be a port number, or 0 to turn metrics off")
    return port


def quiet_libraries() -> None:
    """Hold credential- and URL-bearing library loggers at WARNING (call after logging is configured)."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
