"""Operator settings from environment variables (the Helm chart sets them).

Each variable is documented here, where it is read, and in docs/configuration.md.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

# Libraries whose DEBUG output carries credentials (botocore logs signed headers and
# access key ids) or whose INFO lines carry whole URLs (httpx: page tokens): held at
# WARNING whatever the operator's own verbosity, so no credential reaches a log.
DEFAULT_SHARD = "default"
SHARD_LABEL = "prefectops.dev/shard"
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "hpack")


@dataclass(frozen=True)
class OperatorConfig:
    # PWO_NAMESPACES: comma-separated namespaces to watch; empty = the whole cluster.
    namespaces: tuple[str, ...]
    # PWO_TICK_SECONDS: how often a policy sleeping to its next start wakes to look for a
    # spec edit or lost leadership: bounds how late a spec edit is handled.
    tick_seconds: float
    # PWO_LIVENESS_ENDPOINT: where the probes are served (handlers/probes.py), e.g. http://0.0.0.0:8081/healthz:
    # liveness at its path, readiness at /readyz on the same port; unset = no probe server.
    liveness_endpoint: str | None
    # PWO_LOG_FORMAT: plain | full | json.
    log_format: str
    # PWO_VERBOSE: 1 for debug logs.
    verbose: bool
    # PWO_METRICS_PORT: Prometheus /metrics port; 0 turns the endpoint off.
    metrics_port: int = 8080
    # PWO_PREFECT_MAX_CONNECTIONS: connections to each Prefect server or Cloud account, shared
    # by its policies, and so its requests in flight at once; more wait in the operator,
    # within their request timeout. Per server: a slow one cannot take another's connections.
    prefect_max_connections: int = 50
    # PWO_MAX_CYCLES_IN_FLIGHT: cycles run at once per Prefect server or Cloud account; more
    # wait for a turn and start late rather than all queue for the same connections and time
    # out; a quarter of them is kept for policies past their first cycle here (core.turn_rules).
    max_cycles_in_flight: int = 16
    # PWO_MAX_CYCLES_IN_FLIGHT_TOTAL: cycles run at once, all servers together (default 4 × the
    # per-server figure); a server with no cycle in flight may still start one (fleet/keyed_turns.py).
    max_cycles_in_flight_total: int = 64
    # PWO_PREFECT_EVENTS: 0 turns Prefect's event stream off: every cycle then reads its
    # pool in full (5 requests) instead of only what the stream says changed.
    prefect_events: bool = True
    # PWO_PREFECT_RESYNC_SECONDS: with the event stream on, each cached read is refreshed at
    # least this often whatever the stream says (a safety net, as an informer's resync).
    prefect_resync_seconds: float = 300.0
    # PWO_SECRET_WATCH: how Secrets are kept current (kube/secrets.py): "namespace" (one
    # list+watch per namespace a policy reads a Secret in; RBAC list/watch on Secrets there),
    # "name" (one watch per Secret, by field selector: RBAC resourceNames can allow it), "off".
    secret_watch: str = "namespace"
    # PWO_SECRET_CACHE_SECONDS: while a Secret is not watched (mode off, a watch starting,
    # broken or refused), how long a GET's answer is used; 0 reads it every cycle.
    secret_cache_seconds: float = 300.0
    # PWO_STATUS_HEARTBEAT_SECONDS: status.lastReconcileTime is refreshed at least this often
    # even when nothing else in the status changed (which is otherwise not written).
    status_heartbeat_seconds: float = 600.0
    # PWO_SHARD: the shard this process serves: policies labelled prefectops.dev/shard=<it>;
    # empty = the default shard (unlabelled policies and those labelled "default").
    shard: str = ""
    # POD_NAME (downward API), else <hostname>-<pid> (two local processes never share one):
    # this replica's identity in the Lease.
    identity: str = "local"
    # PWO_LEADER_ELECTION: 0 turns the Lease off (every process acts: one replica only).
    leader_election: bool = True
    # PWO_LEASE_NAMESPACE (else POD_NAMESPACE, else the ServiceAccount's, else "default")
    # and PWO_LEASE_NAME (default prefect-workpool-operator[-<shard>]): the shard's Lease.
    lease_namespace: str = "default"
    lease_name: str = "prefect-workpool-operator"
    # PWO_LEASE_SECONDS / PWO_RENEW_DEADLINE_SECONDS / PWO_RETRY_SECONDS: controller-runtime's
    # 15 / 10 / 2. The renew deadline must be shorter than the lease (docs/design.md).
    lease_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    @property
    def shard_name(self) -> str:
        return self.shard or DEFAULT_SHARD


def load_config(env: dict[str, str] | None = None) -> OperatorConfig:
    env = dict(os.environ if env is None else env)
    namespaces = tuple(n.strip() for n in env.get("PWO_NAMESPACES", "").split(",") if n.strip())
    tick = float(env.get("PWO_TICK_SECONDS", "5"))
    if tick <= 0:
        raise ValueError("PWO_TICK_SECONDS must be positive")
    log_format = env.get("PWO_LOG_FORMAT", "plain").lower()
    if log_format not in {"plain", "full", "json"}:
        raise ValueError("PWO_LOG_FORMAT must be plain, full or json")
    shard = env.get("PWO_SHARD", "").strip()
    lease = _non_negative(env, "PWO_LEASE_SECONDS", "15")
    renew = _non_negative(env, "PWO_RENEW_DEADLINE_SECONDS", "10")
    retry = _non_negative(env, "PWO_RETRY_SECONDS", "2")
    if not 0 < retry < renew < lease:
        raise ValueError("need 0 < PWO_RETRY_SECONDS < PWO_RENEW_DEADLINE_SECONDS < PWO_LEASE_SECONDS")
    per_server = _positive_int(env, "PWO_MAX_CYCLES_IN_FLIGHT", "16")
    return OperatorConfig(
        namespaces=namespaces,
        tick_seconds=tick,
        liveness_endpoint=env.get("PWO_LIVENESS_ENDPOINT") or None,
        log_format=log_format,
        verbose=env.get("PWO_VERBOSE", "") in {"1", "true", "yes"},
        metrics_port=_port(env.get("PWO_METRICS_PORT", "8080")),
        prefect_max_connections=_positive_int(env, "PWO_PREFECT_MAX_CONNECTIONS", "50"),
        max_cycles_in_flight=per_server,
        max_cycles_in_flight_total=_positive_int(env, "PWO_MAX_CYCLES_IN_FLIGHT_TOTAL", str(4 * per_server)),
        secret_watch=_secret_watch(env.get("PWO_SECRET_WATCH", "namespace")),
        prefect_events=env.get("PWO_PREFECT_EVENTS", "1") not in {"0", "false", "no"},
        prefect_resync_seconds=_non_negative(env, "PWO_PREFECT_RESYNC_SECONDS", "300"),
        secret_cache_seconds=_non_negative(env, "PWO_SECRET_CACHE_SECONDS", "300"),
        status_heartbeat_seconds=_non_negative(env, "PWO_STATUS_HEARTBEAT_SECONDS", "600"),
        shard=shard,
        identity=env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        leader_election=env.get("PWO_LEADER_ELECTION", "1") not in {"0", "false", "no"},
        lease_namespace=env.get("PWO_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or _own_namespace(),
        lease_name=env.get("PWO_LEASE_NAME") or ("prefect-workpool-operator" + (f"-{shard}" if shard else "")),
        lease_seconds=lease,
        renew_deadline_seconds=renew,
        retry_seconds=retry,
    )


def ensure_home(env: dict[str, str] | None = None) -> None:
    """Give HOME a value when it has none and the passwd database has no entry for this uid
    (the image runs as 65532 without one): the kubernetes client computes ~/.kube/config at
    import and Path.home() raises then. Nothing is written there; it need not exist."""
    env = os.environ if env is None else env
    if env.get("HOME"):
        return
    import pwd  # POSIX only, like the image

    try:
        pwd.getpwuid(os.getuid())
    except KeyError:
        env["HOME"] = "/nonexistent"


def _own_namespace() -> str:
    try:
        with open(_SA_NAMESPACE) as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


def in_shard(labels: dict[str, str] | None, shard: str) -> bool:
    """Whether a policy with these labels belongs to ``shard`` ("" = the default shard)."""
    label = (labels or {}).get(SHARD_LABEL, "")
    return label == shard or (not shard and label == DEFAULT_SHARD) or (shard == DEFAULT_SHARD and not label)


def _secret_watch(text: str) -> str:
    mode = text.strip().lower() or "namespace"
    if mode not in ("namespace", "name", "off"):
        raise ValueError("PWO_SECRET_WATCH must be namespace, name or off")
    return mode


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError("PWO_METRICS_PORT must be a port number, or 0 to turn metrics off")
    return port


def quiet_libraries() -> None:
    """Hold credential- and URL-bearing library loggers at WARNING (call after logging is configured)."""
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def _positive_int(env: dict[str, str], name: str, default: str) -> int:
    value = int(env.get(name, default))
    if value < 1:
        raise ValueError(f"{name} must be at least 1")
    return value


def _non_negative(env: dict[str, str], name: str, default: str) -> float:
    value = float(env.get(name, default))
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return value
