"""The boto3 clients shared by every policy, and the static keys each request is signed with.

One botocore client per service, region, endpoint and client settings: policies on
the pod's identity share it, and so do policies with static keys from a Secret, whose
requests it signs with the keys of the policy whose call runs on the thread (``calling``).
``transport.AwsTransport`` acquires its clients here and marks each call's owner.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

import boto3
import botocore.session
from botocore import exceptions as boto
from botocore.config import Config
from botocore.credentials import Credentials, ReadOnlyCredentials


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
    """One botocore client per distinct service, region, endpoint and client settings, shared
    by every policy that calls there: those on the pod's identity, and — signed per request
    with their own keys — those with static keys from a Secret.

    A Session loads each service's model once, but each client still costs ≈0.26 MiB (its
    event handlers, endpoint, connection pool): one per identity made own-key fleets grow by
    that per policy. Static keys are therefore not baked into a client: the shared
    static-key client's credentials are those of the policy whose call runs on the thread
    (``calling``), so requests keep their own identity. Shared with the identity too: the
    client's adaptive retry rate and retry quota (as policies on the pod's identity always
    shared them). Each identity still holds its own handle (``acquire``/``release``, counted
    by ``len``); identities are keyed by a digest of the credentials, never the values.
    Clients are thread-safe; Sessions are not, so clients are made under a lock. A client
    is closed when the last identity using it releases it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[bool, boto3.session.Session] = {}  # static keys? -> session
        self._cores: dict[bool, botocore.session.Session] = {}
        self._handles: dict[tuple[Any, ...], list[Any]] = {}  # identity key -> [botocore key, users]
        self._clients: dict[tuple[Any, ...], list[Any]] = {}  # botocore key -> [client, identities]

    def __len__(self) -> int:
        return len(self._handles)

    @property
    def botocore_clients(self) -> int:
        return len(self._clients)

    def __repr__(self) -> str:  # identities appear as digests only
        return f"SharedBotoClients({sorted(map(repr, self._handles))})"

    def acquire(
        self, service: str, region: str, endpoint_url: str | None, credentials: AwsCredentials | None, config: Config
    ) -> tuple[tuple[Any, ...], Any]:
        static = credentials is not None
        where = (service, region, endpoint_url, static, _config_key(config))
        key = (*where[:3], _identity(credentials), where[4])
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                entry = self._clients.get(where)
                if entry is None:
                    client = self._session(static).client(service, region_name=region, endpoint_url=endpoint_url,
                                                          config=config)
                    client.meta.events.register("before-send", _route_send)
                    entry = self._clients[where] = [client, 0]
                entry[1] += 1
                handle = self._handles[key] = [where, 0]
            handle[1] += 1
            return key, self._clients[handle[0]][0]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            handle = self._handles.get(key)
            if handle is None:
                return
            handle[1] -= 1
            if handle[1] > 0:
                return
            del self._handles[key]
            entry = self._clients[handle[0]]
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._clients[handle[0]]
        entry[0].close()

    def _session(self, static: bool) -> boto3.session.Session:
        """The pod's default chain, or (static) a session whose one credentials object signs
        each request with the calling policy's keys; both share one loader (models parsed once)."""
        session = self._sessions.get(static)
        if session is None:
            core = botocore.session.get_session()
            if static:
                core.register_component("credential_provider", _CallerKeysResolver())
            if self._cores:
                core.register_component("data_loader", next(iter(self._cores.values())).get_component("data_loader"))
            self._cores[static] = core
            session = self._sessions[static] = boto3.session.Session(botocore_session=core)
        return session


class _CallerKeys(Credentials):
    """Credentials of whichever policy's call runs on this thread (``calling``);
    botocore freezes them once per request when it signs."""

    def __init__(self) -> None:  # no keys of its own
        self.method = "explicit"
        self.account_id = None

    def _keys(self) -> AwsCredentials:
        owner = getattr(calling, "client", None)
        keys = owner._credentials if owner is not None else None
        if keys is None:
            raise boto.NoCredentialsError()
        return keys

    @property  # type: ignore[override]
    def access_key(self) -> str:
        return self._keys().access_key_id

    @property  # type: ignore[override]
    def secret_key(self) -> str:
        return self._keys().secret_access_key

    @property  # type: ignore[override]
    def token(self) -> str | None:
        return self._keys().session_token

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        keys = self._keys()
        return ReadOnlyCredentials(keys.access_key_id, keys.secret_access_key, keys.session_token, None)


class _CallerKeysResolver:
    """botocore's credential_provider component for the static-keys session."""

    def load_credentials(self) -> Credentials:
        return _CallerKeys()


SHARED_CLIENTS = SharedBotoClients()
# The AwsClient whose call runs on this thread (requests are counted per policy): set by
# AwsTransport._call_blocking; its ``_credentials`` sign and its ``_on_send`` counts the request.
calling = threading.local()


def _route_send(event_name: str = "", **kwargs: Any) -> None:
    owner = getattr(calling, "client", None)
    if owner is not None:
        owner._on_send(event_name, **kwargs)


def _identity(credentials: AwsCredentials | None) -> str:
    if credentials is None:
        return "default-chain"
    return hashlib.sha256("\n".join(credentials.secrets()).encode()).hexdigest()


def _config_key(config: Config) -> tuple[Any, ...]:
    return (repr(sorted((config.retries or {}).items())), config.connect_timeout, config.read_timeout,
            config.user_agent_extra)
