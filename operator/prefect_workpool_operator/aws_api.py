"""Async adapter for the AWS APIs the operator calls: ECS, CloudWatch, Application Auto Scaling.

boto3 blocks, so every call runs in a worker thread (``asyncio.to_thread``): a slow or
throttled AWS call must not freeze the other policies' timers. botocore retries
throttling and transient errors in "adaptive" mode, which also slows the client down
after a throttle. On top of that a per-cycle call budget caps the requests one policy
sends: once it is spent, infrastructure checks answer UNKNOWN (hands off the run)
instead of calling, so the operator never becomes the cause of the DescribeTasks
throttling it exists to clean up after. Errors become ``AwsError`` with a stable
reason and a message that never holds credentials.

Moto (the tests' AWS) differs from ECS in ways that matter here; see
tests/integration/test_aws_api.py for what is and is not covered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore import exceptions as boto
from botocore.config import Config

from .core.health import Failure
from .core.stale import InfraReading, Infrastructure, PendingRun

log = logging.getLogger(__name__)

# Reasons of the AwsConnected condition: part of the interface, never respelled.
ACCESS_DENIED = "AccessDenied"
CLUSTER_NOT_FOUND = "ClusterNotFound"
SERVICE_NOT_FOUND = "ServiceNotFound"
THROTTLED = "Throttled"
INVALID_CONFIGURATION = "InvalidConfiguration"
UNREACHABLE = "Unreachable"
AWS_ERROR = "AwsError"
AWS_ENDPOINT_INVALID = "AwsEndpointInvalid"  # the endpoint answers, but not as AWS (an HTML page)
# Not an AWS failure: this policy's own limit. Checks turn it into UNKNOWN; it never
# sets ``last_error``, so it does not make AwsConnected false.
CALL_BUDGET_EXHAUSTED = "CallBudgetExhausted"

PID_SEPARATOR = "::"  # prefect-aws: infrastructure_pid = "{cluster}::{task_arn}"
RUN_ID_TAG = "prefect.io/flow-run-id"  # prefect-aws tags every task it starts with its run
DESCRIBE_TASKS_MAX = 100  # ECS: at most 100 tasks per DescribeTasks
LIST_TASKS_MAX = 100  # ECS: at most 100 ARNs per ListTasks page
SCALABLE_DIMENSION = "ecs:service:DesiredCount"

DEFAULT_MAX_ATTEMPTS = 5  # requests per call, the first one included
DEFAULT_CALLS_PER_CYCLE = 25  # steady state needs 1; 300 stale runs with pids need 3 more
DEFAULT_MAX_LIST_PAGES = 5  # pid-less runs: scan at most 500 running tasks per cycle

# lastStatus of a task that may still run user code. The stopping ones count as alive:
# containers run until STOPPED (their stopTimeout, at most 2 min, plus teardown), so
# waiting one more cycle is cheap while requeueing then could start the flow twice.
LIVE_STATUSES = frozenset(
    {"PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING", "STOPPING", "DEPROVISIONING"}
)
GONE_STATUSES = frozenset({"STOPPED", "DELETED"})

_ACCESS_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException",
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException",
    "InvalidSignatureException", "SignatureDoesNotMatch", "MissingAuthenticationToken",
    "IncompleteSignature", "AuthFailure", "NotAuthorized",
})
# What botocore's retry logic treats as throttling (LimitExceededException is an ECS quota, not a rate).
_THROTTLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "RequestThrottled", "SlowDown",
})
_CREDENTIAL_ERRORS = (
    boto.NoCredentialsError, boto.PartialCredentialsError, boto.CredentialRetrievalError,
    boto.UnknownCredentialError, boto.SSOError, boto.ProfileNotFound,
)
_CONFIGURATION_ERRORS = (
    boto.NoRegionError, boto.InvalidRegionError, boto.UnknownEndpointError, boto.EndpointProviderError,
    boto.InvalidEndpointConfigurationError, boto.ParamValidationError, boto.ValidationError,
)
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b")
_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.DOTALL)
MIN_SECRET_LENGTH = 8  # shorter "secrets" (test values) would blank out ordinary words
MAX_MESSAGE = 400


class AwsError(Exception):
    """A failure with a stable ``reason``; ``str()`` is safe to show users."""

    def __init__(self, reason: str, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.operation = operation

    def as_failure(self) -> Failure:
        return Failure(self.reason, self.message)


class AwsCredentials:
    """Static credentials read from a Secret by the caller; without them the default
    chain applies (IRSA, EKS Pod Identity, instance role). Never printed."""

    __slots__ = ("access_key_id", "secret_access_key", "session_token")

    def __init__(self, access_key_id: str, secret_access_key: str, session_token: str | None = None) -> None:
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.session_token = session_token or None

    def __repr__(self) -> str:
        return "AwsCredentials(<redacted>)"

    def secrets(self) -> list[str]:
        return [s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s]


class SharedBotoClients:
    """One boto3 Session for every policy, and one botocore client per distinct service,
    region, endpoint, identity and client settings, shared by the policies that use it.

    A Session loads each service's model once; a session and client per policy cost
    ≈12 MiB each. Clients are thread-safe; the Session is not, so clients are made under
    a lock. Identities are keyed by a digest of the credentials, never the values.
    A client is closed when the last ``AwsClient`` using it releases it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._clients: dict[tuple[Any, ...], list[Any]] = {}  # key -> [client, users]

    def __len__(self) -> int:
        return len(self._clients)

    def __repr__(self) -> str:  # identities appear as digests only
        return f"SharedBotoClients({sorted(map(repr, self._clients))})"

    def acquire(
        self, service: str, region: str, endpoint_url: str | None, credentials: AwsCredentials | None, config: Config
    ) -> tuple[tuple[Any, ...], Any]:
        key = (service, region, endpoint_url, _identity(credentials), _config_key(config))
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                if self._session is None:
                    self._session = boto3.session.Session()
                client = self._session.client(
                    service, region_name=region, endpoint_url=endpoint_url, config=config,
                    aws_access_key_id=credentials.access_key_id if credentials else None,
                    aws_secret_access_key=credentials.secret_access_key if credentials else None,
                    aws_session_token=credentials.session_token if credentials else None,
                )
                client.meta.events.register("before-send", _route_send)
                entry = self._clients[key] = [client, 0]
            entry[1] += 1
            return key, entry[0]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._clients[key]
        entry[0].close()


SHARED_CLIENTS = SharedBotoClients()
_calling = threading.local()  # the AwsClient whose call runs on this thread (requests are counted per policy)


def _route_send(event_name: str = "", **kwargs: Any) -> None:
    owner = getattr(_calling, "client", None)
    if owner is not None:
        owner._on_send(event_name, **kwargs)


def _identity(credentials: AwsCredentials | None) -> str:
    if credentials is None:
        return "default-chain"
    return hashlib.sha256("\n".join(credentials.secrets()).encode()).hexdigest()


def _config_key(config: Config) -> tuple[Any, ...]:
    return (repr(sorted((config.retries or {}).items())), config.connect_timeout, config.read_timeout,
            config.user_agent_extra)


class CallBudget:
    """Requests one policy may send to AWS per cycle. Retries count: each is a request
    AWS rate-limits. A call starts only while budget remains, so a cycle overshoots by
    at most its last call's retries."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the call budget must allow at least one call")
        self.limit = limit
        self.used = 0
        self.refused = 0  # calls not made because the budget was spent

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def reset(self) -> None:
        self.used = self.refused = 0


@dataclass(frozen=True)
class ServiceState:
    """An ECS service as DescribeServices/UpdateService report it."""

    arn: str
    status: str  # ACTIVE or DRAINING (INACTIVE is reported as ServiceNotFound)
    desired: int
    running: int
    pending: int
    deployments: int
    rollout_in_progress: bool  # some deployment's rolloutState is IN_PROGRESS

    @property
    def deployment_in_progress(self) -> bool:
        return self.deployments > 1 or self.rollout_in_progress


class AwsClient:
    """The AWS calls one policy makes, in one region with one set of credentials.

    Call ``start_cycle()`` at the start of each reconcile cycle: it refills the call
    budget and clears ``last_error`` (the cycle's latest AWS failure, for the
    AwsConnected condition). ``calls`` counts requests sent per operation, retries
    included (for metrics).
    """

    def __init__(
        self,
        region: str,
        *,
        endpoint_url: str | None = None,
        credentials: AwsCredentials | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        calls_per_cycle: int = DEFAULT_CALLS_PER_CYCLE,
        max_list_pages: int = DEFAULT_MAX_LIST_PAGES,
        shared: SharedBotoClients | None = None,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url or None
        self.max_list_pages = max_list_pages
        self.budget = CallBudget(calls_per_cycle)
        self.calls: Counter[str] = Counter()
        self.last_error: AwsError | None = None
        self._credentials = credentials
        self._config = Config(
            # botocore's "max_attempts" counts retries only; "total_max_attempts" includes the first.
            retries={"mode": "adaptive", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            user_agent_extra="prefect-workpool-operator",
        )
        self._lock = threading.Lock()  # clients are created and counters bumped in worker threads
        self._shared = shared if shared is not None else SHARED_CLIENTS
        self._clients: dict[str, Any] = {}
        self._keys: dict[str, tuple[Any, ...]] = {}

    def __repr__(self) -> str:
        return f"AwsClient(region={self.region!r}, endpoint={self._endpoint_label()!r})"

    def start_cycle(self) -> None:
        self.budget.reset()
        self.last_error = None

    def close(self) -> None:
        """Release this policy's share of the clients (the last user closes them)."""
        with self._lock:
            keys, self._keys, self._clients = self._keys, {}, {}
        for key in keys.values():
            self._shared.release(key)

    # -- ECS service and scaling ------------------------------------------------------

    async def describe_service(self, cluster: str, service: str) -> ServiceState:
        """One DescribeServices call."""
        answer = await self._call("ecs", "describe_services", {"cluster": cluster, "services": [service]})
        services = answer.get("services") or []
        if not services or services[0].get("status") == "INACTIVE":
            raise self._failed(AwsError(
                SERVICE_NOT_FOUND,
                f"ECS service {service!r} does not exist in cluster {cluster!r} ({self.region})",
                operation="DescribeServices",
            ))
        return _service_state(services[0])

    async def set_desired_count(self, cluster: str, service: str, desired: int) -> ServiceState:
        """One UpdateService call; returns the service as the update left it."""
        if desired < 0:
            raise ValueError("desiredCount cannot be negative")
        answer = await self._call(
            "ecs", "update_service", {"cluster": cluster, "service": service, "desiredCount": desired}
        )
        return _service_state(answer["service"])

    async def scalable_target(self, cluster: str, service: str) -> bool:
        """Whether Application Auto Scaling owns the service's desiredCount (one call)."""
        answer = await self._call("application-autoscaling", "describe_scalable_targets", {
            "ServiceNamespace": "ecs",
            "ResourceIds": [f"service/{_name(cluster)}/{_name(service)}"],
            "ScalableDimension": SCALABLE_DIMENSION,
        })
        return bool(answer.get("ScalableTargets"))

    async def put_backlog_metric(
        self, namespace: str, metric_name: str, dimensions: Mapping[str, str], value: float, *, unit: str = "Count"
    ) -> None:
        """One PutMetricData call with one datum."""
        datum = {
            "MetricName": metric_name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
            "Value": float(value),
            "Unit": unit,
        }
        await self._call("cloudwatch", "put_metric_data", {"Namespace": namespace, "MetricData": [datum]})

    # -- infrastructure checks (never raise: failures answer UNKNOWN) -----------------

    async def task_states(self, pids: Iterable[str]) -> dict[str, InfraReading]:
        """What became of the task behind each prefect-aws pid (``"{cluster}::{task_arn}"``).

        DescribeTasks per cluster, ≤100 tasks per call. STOPPED → GONE with its stopCode
        and stoppedReason as the proof; reported MISSING or absent from the answer → GONE,
        "task unknown to ECS"; any other known status → ALIVE. A pid that is not
        ``cluster::arn``, names another region, or could not be checked (error, budget
        spent) → UNKNOWN with the reason. After a Throttled answer no further call is
        made this check.
        """
        answers: dict[str, InfraReading] = {}
        by_cluster: dict[str, dict[str, list[str]]] = {}
        for pid in dict.fromkeys(pids):
            parsed = parse_pid(pid)
            if parsed is None or not self._in_region(*parsed):
                answers[pid] = InfraReading(Infrastructure.UNKNOWN, "its pid names no task in this region")
                continue
            cluster, task_arn = parsed
            by_cluster.setdefault(cluster, {}).setdefault(task_arn, []).append(pid)

        stop_all: AwsError | None = None
        for cluster, tasks in by_cluster.items():
            skip = stop_all
            for batch in _chunks(list(tasks), DESCRIBE_TASKS_MAX):
                states: dict[str, InfraReading] = {}
                if skip is None:
                    try:
                        answer = await self._call("ecs", "describe_tasks", {"cluster": cluster, "tasks": batch})
                        states = _task_readings(batch, answer)
                    except AwsError as exc:
                        # Skip the rest of this cluster; after throttling (or with the budget spent) stop calling at all.
                        skip = exc
                        if exc.reason in (THROTTLED, CALL_BUDGET_EXHAUSTED):
                            stop_all = exc
                unknown = InfraReading(Infrastructure.UNKNOWN, _unknown_detail(skip))
                for arn in batch:
                    for pid in tasks[arn]:
                        answers[pid] = states.get(arn, unknown)
        return answers

    async def tasks_for_runs(self, cluster: str, run_ids: Iterable[str]) -> dict[str, InfraReading]:
        """For runs without a pid: is a live task tagged ``prefect.io/flow-run-id=<run>``?

        One scan serves every run: ListTasks (desiredStatus RUNNING, ≤``max_list_pages``
        pages of 100) then DescribeTasks with tags, 100 per call. Runs with a live tagged
        task → ALIVE; others → NONE_FOUND, but only when the scan saw every running task:
        on an error, a spent budget or more running tasks than the page bound, UNKNOWN.
        """
        wanted = set(run_ids)
        if not wanted:
            return {}
        alive: set[str] = set()
        unsure: set[str] = set()
        failure: AwsError | None = None
        detail = f"more than {self.max_list_pages * LIST_TASKS_MAX} running tasks to scan"
        complete = False
        try:
            arns = await self._running_task_arns(cluster)
            if arns is not None:
                for batch in _chunks(arns, DESCRIBE_TASKS_MAX):
                    answer = await self._call(
                        "ecs", "describe_tasks", {"cluster": cluster, "tasks": batch, "include": ["TAGS"]}
                    )
                    for task in answer.get("tasks") or []:
                        run_id = _tag(task, RUN_ID_TAG)
                        if run_id not in wanted:
                            continue
                        liveness = task_liveness(task.get("lastStatus"))
                        if liveness is Infrastructure.ALIVE:
                            alive.add(run_id)
                        elif liveness is Infrastructure.UNKNOWN:
                            unsure.add(run_id)
                complete = True
        except AwsError as exc:
            failure = exc  # recorded in last_error (or the budget); the runs not seen alive stay UNKNOWN
            detail = _unknown_detail(exc)
        # A STOPPED task found by its tag is no proof either way: the worker may have started another.
        rest = InfraReading(Infrastructure.NONE_FOUND) if complete and failure is None else \
            InfraReading(Infrastructure.UNKNOWN, detail)
        answers: dict[str, InfraReading] = {}
        for r in wanted:
            if r in alive:
                answers[r] = InfraReading(Infrastructure.ALIVE)
            elif r in unsure:
                answers[r] = InfraReading(Infrastructure.UNKNOWN, "its task has a status this operator does not know")
            else:
                answers[r] = rest
        return answers

    async def _running_task_arns(self, cluster: str) -> list[str] | None:
        """Every task ARN with desiredStatus RUNNING, or None when there are more than the bound."""
        arns: list[str] = []
        token: str | None = None
        for _ in range(self.max_list_pages):
            params: dict[str, Any] = {"cluster": cluster, "desiredStatus": "RUNNING", "maxResults": LIST_TASKS_MAX}
            if token:
                params["nextToken"] = token
            page = await self._call("ecs", "list_tasks", params)
            arns.extend(page.get("taskArns") or [])
            token = page.get("nextToken")
            if not token:
                return arns
        log.warning(
            "ECS cluster %r runs more than %d tasks: runs without infrastructure_pid are left alone this cycle",
            cluster, self.max_list_pages * LIST_TASKS_MAX,
        )
        return None

    # -- transport --------------------------------------------------------------------

    async def _call(self, service: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.budget.exhausted:
            self.budget.refused += 1
            raise AwsError(
                CALL_BUDGET_EXHAUSTED, f"the AWS call budget of {self.budget.limit} per cycle is spent", operation=method
            )
        try:
            return await asyncio.to_thread(self._call_blocking, service, method, params)
        except AwsError as exc:
            raise self._failed(exc) from None

    def _call_blocking(self, service: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        operation = method
        _calling.client = self  # the shared client's before-send hook counts this policy's requests
        try:
            client = self._client(service)
            operation = client.meta.method_to_api_mapping.get(method, method)
            answer: dict[str, Any] = getattr(client, method)(**params)
            self._check_is_aws(answer, operation, service, empty_ok=_empty_answer_expected(client, operation))
            return answer
        except AwsError:
            raise
        except boto.ClientError as exc:
            self._check_is_aws(exc.response, operation, service)
            raise self._client_error(exc, operation, params) from None
        except _CREDENTIAL_ERRORS as exc:
            raise AwsError(
                ACCESS_DENIED,
                f"{operation}: no usable AWS credentials ({type(exc).__name__}): set up IRSA / EKS Pod Identity "
                "or an instance role, or reference a Secret with static credentials",
                operation=operation,
            ) from None
        except _CONFIGURATION_ERRORS as exc:
            raise AwsError(INVALID_CONFIGURATION, self._safe(f"{operation}: {exc}"), operation=operation) from None
        except (boto.ConnectionError, boto.HTTPClientError) as exc:
            raise AwsError(
                UNREACHABLE, f"{operation}: could not reach {self._endpoint_label(service)}: {type(exc).__name__}",
                operation=operation,
            ) from None
        except boto.CapacityNotAvailableError:
            raise AwsError(THROTTLED, f"{operation}: the client's retry capacity is spent", operation=operation) from None
        except boto.BotoCoreError as exc:
            raise AwsError(AWS_ERROR, self._safe(f"{operation}: {type(exc).__name__}: {exc}"), operation=operation) from None
        finally:
            _calling.client = None

    def _check_is_aws(self, answer: Mapping[str, Any], operation: str, service: str, *, empty_ok: bool = False) -> None:
        """An HTML page parses as an empty answer ("no such service"): name it for what it is."""
        metadata = answer.get("ResponseMetadata") or {}
        kind = str((metadata.get("HTTPHeaders") or {}).get("content-type", "")).split(";")[0].strip().lower()
        if not kind.startswith("text/html"):
            return
        # moto labels its JSON and XML answers text/html too: only a body that is HTML (an
        # error's raw text) or that parsed to nothing at all is a web page.
        error = answer.get("Error") or {}
        body = str(error.get("Message") or "").lstrip()[:100].lower()
        parsed_nothing = not error and not set(answer) - {"ResponseMetadata"} and not empty_ok
        if body.startswith(("<!doctype html", "<html")) or parsed_nothing:
            raise AwsError(
                AWS_ENDPOINT_INVALID,
                f"{operation}: {self._endpoint_label(service)} answered HTTP {metadata.get('HTTPStatusCode')} ({kind}), "
                "not an AWS API: check spec.ecs.endpointUrl",
                operation=operation,
            )

    def _client(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is not None:
                return client
            try:
                key, client = self._shared.acquire(service, self.region, self.endpoint_url, self._credentials,
                                                   self._config)
            except (ValueError, boto.BotoCoreError) as exc:
                # Bad region or endpoint URL: botocore refuses to build the client.
                raise AwsError(
                    INVALID_CONFIGURATION,
                    self._safe(f"cannot create the {service} client (region {self.region!r}"
                               + (f", endpoint {self._endpoint_label()}" if self.endpoint_url else "")
                               + f"): {exc}"),
                ) from None
            self._clients[service], self._keys[service] = client, key
            return client

    def _on_send(self, event_name: str = "", **_: Any) -> None:
        """botocore fires before-send.<service>.<Operation> for every attempt, retries too."""
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.calls[operation] += 1
            self.budget.used += 1

    def _failed(self, exc: AwsError) -> AwsError:
        if exc.reason != CALL_BUDGET_EXHAUSTED:
            self.last_error = exc
        return exc

    def _client_error(self, exc: boto.ClientError, operation: str, params: Mapping[str, Any]) -> AwsError:
        error = exc.response.get("Error") or {}
        meta = exc.response.get("ResponseMetadata") or {}
        code = str(error.get("Code") or "")
        status = meta.get("HTTPStatusCode")
        detail = self._safe(_plain(str(error.get("Message") or "")) or code or f"HTTP {status}")
        cluster = params.get("cluster")
        if code == "ClusterNotFoundException":
            return AwsError(CLUSTER_NOT_FOUND, f"ECS cluster {cluster!r} does not exist in {self.region}",
                            operation=operation)
        if code in ("ServiceNotFoundException", "ServiceNotActiveException"):
            service = params.get("service") or (params.get("services") or [None])[0]
            return AwsError(SERVICE_NOT_FOUND,
                            f"ECS service {service!r} does not exist or is inactive in cluster {cluster!r} ({self.region})",
                            operation=operation)
        if code in _THROTTLE_CODES or status == 429:
            attempts = int(meta.get("RetryAttempts") or 0) + 1
            return AwsError(THROTTLED, f"{operation} was throttled by AWS ({code or status}) {attempts} time(s) in a row",
                            operation=operation)
        if code in _ACCESS_CODES or status == 403:
            return AwsError(ACCESS_DENIED, f"{operation} was refused ({code or status}): {detail}", operation=operation)
        return AwsError(AWS_ERROR, f"{operation} failed ({code or status}): {detail}", operation=operation)

    def _safe(self, text: str) -> str:
        """No credential value, no access key id, and not too long."""
        for secret in self._credentials.secrets() if self._credentials else []:
            if len(secret) >= MIN_SECRET_LENGTH:
                text = text.replace(secret, "<redacted>")
        text = _USERINFO.sub("", _KEY_ID.sub("<redacted>", text))
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"

    def _endpoint_label(self, service: str = "") -> str:
        """Scheme, host and port only: an endpoint URL could carry userinfo."""
        if not self.endpoint_url:
            return f"the AWS {service or 'API'} endpoint in {self.region}"
        parts = urlsplit(self.endpoint_url)
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        if not parts.scheme or not parts.hostname:
            return "an endpoint URL that is not a URL"
        return f"{parts.scheme}://{parts.hostname}{port}"

    def _in_region(self, cluster: str, task_arn: str) -> bool:
        """A task in another region is MISSING here whatever its state: we cannot tell."""
        return all(_arn_region(x) in (None, self.region) for x in (cluster, task_arn))


class EcsInfrastructureCheck:
    """``recovery.InfrastructureCheck`` for ECS.

    Runs with a pid are checked by their task (DescribeTasks, grouped by the pid's
    cluster); runs without one, or with a pid that is not ``cluster::arn``, by the
    ``prefect.io/flow-run-id`` tag of the running tasks of the policy's cluster. Without
    a cluster those runs are left out (NOT_CHECKED). Pids go first: they are cheap
    (≤3 calls for 300 runs) while the tag scan grows with the cluster's task count,
    and there is no scan once ECS has throttled this cycle. Never raises: failures
    answer UNKNOWN and leave their reason in ``client.last_error``; the caller calls
    ``client.start_cycle()`` once per cycle.
    """

    def __init__(self, client: AwsClient, cluster: str | None) -> None:
        self.client = client
        self.cluster = cluster or None

    async def check(self, runs: list[PendingRun]) -> dict[str, InfraReading]:
        with_pid = {r.id: r.infrastructure_pid for r in runs if r.infrastructure_pid and parse_pid(r.infrastructure_pid)}
        answers: dict[str, InfraReading] = {}
        if with_pid:
            states = await self.client.task_states(pid for pid in with_pid.values() if pid)
            answers = {run_id: states.get(pid or "", InfraReading(Infrastructure.UNKNOWN)) for run_id, pid in with_pid.items()}
        pidless = {r.id for r in runs if r.id not in with_pid}
        if not pidless or not self.cluster:
            return answers
        error = self.client.last_error
        if error is not None and error.reason == THROTTLED:
            # ECS just throttled us: a scan would only add to it. Hold until next cycle.
            answers.update(dict.fromkeys(pidless, InfraReading(Infrastructure.UNKNOWN, _unknown_detail(error))))
        else:
            answers.update(await self.client.tasks_for_runs(self.cluster, pidless))
        return answers


# -- helpers ---------------------------------------------------------------------------


def _empty_answer_expected(client: Any, operation: str) -> bool:
    """Operations whose answer has no fields (DeleteScalingPolicy, DeleteAlarms…): empty is not a web page."""
    try:
        shape = client.meta.service_model.operation_model(operation).output_shape
    except Exception:  # an unknown operation name: keep the check
        return False
    return shape is None or not shape.members


def parse_pid(pid: str | None) -> tuple[str, str] | None:
    """``"{cluster}::{task_arn}"`` → (cluster, task_arn); None for anything else."""
    if not pid or PID_SEPARATOR not in pid:
        return None
    cluster, _, task_arn = pid.partition(PID_SEPARATOR)
    if not cluster or not task_arn:
        return None
    return cluster, task_arn


def task_liveness(last_status: object) -> Infrastructure:
    status = str(last_status or "").upper()
    if status in LIVE_STATUSES:
        return Infrastructure.ALIVE
    if status in GONE_STATUSES:
        return Infrastructure.GONE
    return Infrastructure.UNKNOWN  # a status ECS may add later: don't guess


def _task_readings(batch: list[str], answer: Mapping[str, Any]) -> dict[str, InfraReading]:
    found: dict[str, InfraReading] = {}
    for task in answer.get("tasks") or []:
        arn = str(task.get("taskArn") or "")
        found[arn] = found[_task_id(arn)] = _reading(task)
    failures = {str(f.get("arn") or ""): str(f.get("reason") or "") for f in answer.get("failures") or []}
    states: dict[str, InfraReading] = {}
    for arn in batch:
        state = found.get(arn) or found.get(_task_id(arn))
        if state is None:
            reason = failures.get(arn, failures.get(_task_id(arn), "MISSING"))
            # MISSING (or silently absent) means ECS no longer knows the task; other
            # failure reasons say nothing about it.
            state = InfraReading(Infrastructure.GONE, "task unknown to ECS") if reason == "MISSING" else \
                InfraReading(Infrastructure.UNKNOWN, f"DescribeTasks failure {reason!r}")
        states[arn] = state
    return states


def _reading(task: Mapping[str, Any]) -> InfraReading:
    """A described task's liveness; for a stopped one, what ECS says stopped it (the proof)."""
    liveness = task_liveness(task.get("lastStatus"))
    if liveness is not Infrastructure.GONE:
        return InfraReading(liveness, "" if liveness is Infrastructure.ALIVE else f"lastStatus {task.get('lastStatus')!r}")
    proof = [f"task {_task_id(str(task.get('taskArn') or ''))} {str(task.get('lastStatus')).upper()}"]
    if task.get("stopCode"):
        proof.append(f"stopCode {task['stopCode']}")
    if task.get("stoppedReason"):
        proof.append(f"stoppedReason {_clip(str(task['stoppedReason']))!r}")
    return InfraReading(Infrastructure.GONE, ", ".join(proof))


def _unknown_detail(exc: AwsError | None) -> str:
    if exc is None:
        return ""
    if exc.reason == CALL_BUDGET_EXHAUSTED:
        return "the AWS call budget of this cycle is spent"
    return f"ECS {exc.operation or 'call'}: {exc.reason}"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(message: str) -> str:
    """Some endpoints (proxies, moto's IAM check) answer XML to a JSON client: keep its <Message>."""
    if not message.lstrip().startswith("<"):
        return message
    found = _XML_MESSAGE.search(message)
    return found.group(1).strip() if found else ""


def _service_state(raw: Mapping[str, Any]) -> ServiceState:
    deployments = raw.get("deployments") or []
    return ServiceState(
        arn=str(raw.get("serviceArn") or ""),
        status=str(raw.get("status") or ""),
        desired=int(raw.get("desiredCount") or 0),
        running=int(raw.get("runningCount") or 0),
        pending=int(raw.get("pendingCount") or 0),
        deployments=len(deployments),
        rollout_in_progress=any(d.get("rolloutState") == "IN_PROGRESS" for d in deployments),
    )


def _tag(task: Mapping[str, Any], key: str) -> str | None:
    for tag in task.get("tags") or []:
        if tag.get("key") == key:
            return str(tag.get("value"))
    return None


def _task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _name(name_or_arn: str) -> str:
    """Application Auto Scaling resource ids use names, not ARNs."""
    return name_or_arn.rsplit("/", 1)[-1] if name_or_arn.startswith("arn:") else name_or_arn


def _arn_region(value: str) -> str | None:
    parts = value.split(":")
    if not value.startswith("arn:") or len(parts) < 4:
        return None
    return parts[3] or None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
