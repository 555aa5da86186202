"""A TCP proxy on loopback (e.g. in front of the API server) that can break its clients'
connections: ``reset()`` drops the open ones (new ones go through), ``cut()`` drops them and
accepts new ones without ever answering (a network black hole)."""

from __future__ import annotations

import asyncio
import contextlib
import time


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut_at: float | None = None
        self.resets = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.cut_at is not None:
            return  # accepted, never answered
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)
        generation = self.resets

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while self.cut_at is None and self.resets == generation and (data := await src.read(65536)):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def _abort_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def reset(self) -> None:
        self.resets += 1
        self._abort_all()

    def cut(self) -> None:
        self.cut_at = time.monotonic()
        self._abort_all()

    async def close(self) -> None:
        self._abort_all()
        self._server.close()
