"""moto in server mode, plus what tests need and moto lacks: throttling and call counts.

Run by ``MotoServer`` (``python hack/sandbox/moto_throttle.py -H 127.0.0.1 -p PORT``)
instead of plain ``moto_server``. It serves moto's own WSGI app behind a small
middleware that adds two control endpoints:

- ``POST /_pwo/throttle {"action": "DescribeTasks", "count": 3}`` — the next 3 requests
  whose ``X-Amz-Target`` is ``<prefix>.DescribeTasks`` (or exactly ``action``) get
  HTTP 400 ``{"__type": "ThrottlingException", "message": "Rate exceeded"}``, the way
  AWS JSON-protocol services (ECS, Application Auto Scaling) throttle. botocore
  parses that as error code ThrottlingException and retries it. With ``"match": "s"``
  only requests whose body contains ``s`` (a cluster name, say) are throttled, so
  tests sharing the server don't throttle each other.
- ``GET /_pwo/calls`` — requests seen per operation (``X-Amz-Target``, the
  ``<service>.<operation>`` of an RPC-v2 path, or a query-protocol ``Action``),
  throttled ones included: each is one request the AWS account would have paid for.
  ``POST /_pwo/reset`` clears the counts and disarms pending throttles.

moto's ECS tasks also walk RUNNING → DEACTIVATING → … → STOPPED by one step each
time DescribeTasks returns them (its default state transition). Real tasks stay
RUNNING until stopped, and the operator's checks call DescribeTasks, so here tasks
only change state through StopTask.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

CONTROL_PREFIX = "/_pwo/"
THROTTLE_BODY = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
RPC_V2_MARKER = "/service/"  # smithy RPC v2 paths: /service/<target prefix>/operation/<operation>

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


def operation_of(environ: Environ) -> str | None:
    """Which AWS operation a request calls, in ``X-Amz-Target`` spelling where there is one."""
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target)
    path = str(environ.get("PATH_INFO") or "")
    if path.startswith(RPC_V2_MARKER) and "/operation/" in path:
        service, _, operation = path[len(RPC_V2_MARKER):].partition("/operation/")
        return f"{service}.{operation}"
    content_type = str(environ.get("CONTENT_TYPE") or "")
    if environ.get("REQUEST_METHOD") == "POST" and content_type.startswith("application/x-www-form-urlencoded"):
        body = _read_body(environ)
        actions = parse_qs(body.decode("utf-8", "replace")).get("Action")
        if actions:
            return actions[0]
    return None


def _read_body(environ: Environ) -> bytes:
    """Read the body once and put it back, so moto still sees it."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


class FaultInjector:
    """WSGI middleware: counts requests per operation and throttles armed ones."""

    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._armed: dict[tuple[str, str], int] = {}  # (action, body substring or "") -> count
        self._calls: Counter[str] = Counter()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "")
        if path.startswith(CONTROL_PREFIX):
            return self._control(path[len(CONTROL_PREFIX):], environ, start_response)
        operation = operation_of(environ)
        if operation is not None:
            with self._lock:
                need_body = any(m for _, m in self._armed)
            body = _read_body(environ) if need_body else b""
            with self._lock:
                self._calls[operation] += 1
                throttled = self._take(operation, body, json_protocol=bool(environ.get("HTTP_X_AMZ_TARGET")))
            if throttled:
                start_response("400 Bad Request", [
                    ("Content-Type", "application/x-amz-json-1.1"),
                    ("Content-Length", str(len(THROTTLE_BODY))),
                    ("x-amzn-RequestId", "00000000-0000-0000-0000-000000000000"),
                ])
                return [THROTTLE_BODY]
        return self.app(environ, start_response)

    def _take(self, operation: str, body: bytes, *, json_protocol: bool) -> bool:
        # Only JSON-protocol answers are faked: a CBOR or XML client could not parse this body.
        if not json_protocol:
            return False
        for (action, match), left in self._armed.items():
            if left > 0 and action in (operation, operation.rpartition(".")[2]) and match.encode() in body:
                self._armed[(action, match)] -= 1
                return True
        return False

    def _control(self, command: str, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if command == "throttle" and method == "POST":
            try:
                body = json.loads(_read_body(environ) or b"{}")
                action, count, match = str(body["action"]), int(body["count"]), str(body.get("match") or "")
            except (ValueError, KeyError, TypeError) as exc:
                return _json(start_response, "400 Bad Request", {"error": f"expected {{action, count}}: {exc}"})
            with self._lock:
                self._armed[(action, match)] = max(count, 0)
                armed = {f"{a}:{m}" if m else a: n for (a, m), n in self._armed.items()}
            return _json(start_response, "200 OK", {"armed": armed})
        if command == "calls" and method == "GET":
            with self._lock:
                calls = dict(self._calls)
            return _json(start_response, "200 OK", calls)
        if command == "reset" and method == "POST":
            with self._lock:
                self._calls.clear()
                self._armed.clear()
            return _json(start_response, "200 OK", {})
        return _json(start_response, "404 Not Found", {"error": f"unknown control {method} {command}"})


def _json(start_response: StartResponse, status: str, payload: object) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds some URLs from it

    from moto.moto_api import state_manager
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    # Tasks stay as they are until StopTask (see the module docstring).
    state_manager.set_transition("ecs::task", {"progression": "manual", "times": sys.maxsize})

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = FaultInjector(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
