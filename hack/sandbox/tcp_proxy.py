"""A loopback TCP proxy in front of a real server, for making it slow or cutting it off.

``delay`` holds each chunk the client sends for that many seconds before passing it on
(a slow Prefect, seconds per request); with ``idle`` set, only a chunk that follows that
many seconds of quiet on its connection is held (one delay per request or TLS handshake,
not per packet: a busy API server, each answer ``delay`` late); ``cut()`` closes every open connection (an event
stream or keep-alive connection dropped by a load balancer). Runs its own event loop in
a thread, so sync and async callers alike can use it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, delay: float = 0.0, idle: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay, self.idle = delay, idle
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> int:
        """Close every open connection now; returns how many were open."""
        async def close_all() -> int:
            writers = list(self._writers)
            for writer in writers:
                writer.close()
            return len(writers)
        return asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10) // 2

    def stop(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer, delayed=True), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # stop(): a cancelled handler task would otherwise be logged by asyncio's stream callback
        finally:
            self._writers -= {writer, up_writer}
            for w in (writer, up_writer):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool = False) -> None:
        last = 0.0
        try:
            while data := await reader.read(65536):
                if delayed and self.delay and self._loop.time() - last >= self.idle:
                    await asyncio.sleep(self.delay)
                last = self._loop.time()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
