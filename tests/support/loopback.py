"""Small real HTTP servers on loopback that are *not* Prefect or AWS: an HTML page, another
app's JSON, a proxy's login redirect, and a server that accepts and never answers."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PAGES: dict[str, tuple[int, str, bytes, dict[str, str]]] = {
    "html": (200, "text/html; charset=utf-8", b"<!doctype html><html><body>Welcome to nginx!</body></html>", {}),
    "foreign-json": (200, "application/json", json.dumps({"status": "ok", "service": "grafana"}).encode(), {}),
    "login-page": (200, "text/html", b"<html><form action='/oauth2/sign_in'>Sign in</form></html>", {}),
    "redirect": (302, "text/html", b"<a href='https://sso.example.com/login'>Found</a>",
                 {"Location": "https://sso.example.com/login?rd=%2Fapi%2Fhealth&token=abc"}),
    "not-found-html": (404, "text/html", b"<html>404 Not Found</html>", {}),
}


def _handler(kind: str) -> type[http.server.BaseHTTPRequestHandler]:
    status, content_type, body, headers = PAGES[kind]

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serving(kind: str) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` answering every request with the page ``kind``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(kind))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class Hanging(str):
    """The URL of a hanging server; ``connections()`` counts what it has accepted."""

    held: list[socket.socket]

    def connections(self) -> int:
        return len(self.held)


@contextmanager
def hanging() -> Iterator[Hanging]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = Hanging(f"http://127.0.0.1:{listener.getsockname()[1]}")
        url.held = held
        yield url
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        listener.close()
