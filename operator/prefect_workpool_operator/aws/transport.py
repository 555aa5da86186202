"""One policy's connection to AWS: retries, the error table, the call budget and redaction,
on the boto3 clients shared by every policy (``boto_clients``).

boto3 blocks, so every call runs in a worker thread (``asyncio.to_thread``): a slow or
throttled AWS call must not freeze the other policies' timers. botocore retries
throttling and transient errors in "adaptive" mode, which also slows the client down
after a throttle. On top of that a per-cycle call budget caps the requests one policy
sends: once it is spent, infrastructure checks answer UNKNOWN (hands off the run)
instead of calling, so the operator never becomes the cause of the DescribeTasks
throttling it exists to clean up after. Errors become ``AwsError`` with a stable
reason and a message that never holds credentials.

The services' calls live beside this module (``ecs``, ``cloudwatch``, ``autoscaling``);
what their answers mean lives in ``core``.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from botocore import exceptions as boto
from botocore.config import Config

from prefect_workpool_operator.aws.boto_clients import SHARED_CLIENTS, AwsCredentials, SharedBotoClients, calling
from prefect_workpool_operator.core.errors import OperatorError

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

DEFAULT_MAX_ATTEMPTS = 5  # requests per call, the first one included
DEFAULT_CALLS_PER_CYCLE = 25  # steady state needs 1; 300 stale runs with pids need 3 more

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


class AwsError(OperatorError):
    """An AWS failure; ``operation`` names the API call (DescribeTasks, ...) when known."""

    def __init__(self, reason: str, message: str, *, operation: str | None = None) -> None:
        super().__init__(reason, message)
        self.operation = operation


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
        # Kept back from the reads for the cycle's own write (UpdateService, PutMetricData):
        # infrastructure checks run before the write now, and must not starve it.
        self.reserved = 0

    @property
    def remaining(self) -> int:
        return max(self.limit - self.reserved - self.used, 0)

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0

    def reset(self) -> None:
        self.used = self.refused = self.reserved = 0


class AwsTransport:
    """How one policy calls AWS, in one region with one set of credentials.

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
        shared: SharedBotoClients | None = None,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url or None
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
        return f"{type(self).__name__}(region={self.region!r}, endpoint={self._endpoint_label()!r})"

    def start_cycle(self) -> None:
        self.budget.reset()
        self.last_error = None

    def close(self) -> None:
        """Release this policy's share of the clients (the last user closes them)."""
        with self._lock:
            keys, self._keys, self._clients = self._keys, {}, {}
        for key in keys.values():
            self._shared.release(key)

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
        calling.client = self  # the shared client's before-send hook counts this policy's requests
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
            calling.client = None

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


def _plain(message: str) -> str:
    """Some endpoints (proxies, moto's IAM check) answer XML to a JSON client: keep its <Message>."""
    if not message.lstrip().startswith("<"):
        return message
    found = _XML_MESSAGE.search(message)
    return found.group(1).strip() if found else ""


def _empty_answer_expected(client: Any, operation: str) -> bool:
    """Operations whose answer has no fields (DeleteScalingPolicy, DeleteAlarms…): empty is not a web page."""
    try:
        shape = client.meta.service_model.operation_model(operation).output_shape
    except Exception:  # an unknown operation name: keep the check
        return False
    return shape is None or not shape.members


def chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
