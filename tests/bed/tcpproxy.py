"""A TCP relay on loopback that counts the bytes it carries, and can cut a client off.

It sits between one client (the operator) and the apiserver. TLS passes through it
untouched: the client still verifies the apiserver's certificate (whose SANs include
127.0.0.1) and authenticates with its own. What a test learns from it is what crossed the
wire to that client alone, which the apiserver's own metrics cannot tell apart from its
other watchers; `partition()` makes the apiserver unreachable to that client alone.
`cut_next_answer()` loses one answer: the request reaches the upstream, its answer never
reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

PIECE = 64 * 1024


class TcpProxy:
    """Relay 127.0.0.1:`port` (0: any free port) to 127.0.0.1:`upstream_port`."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._down = 0  # upstream -> client
        self._up = 0  # client -> upstream
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._partitioned = False
        self._cut_armed = False
        self.answers_cut = 0

    # -- test thread -----------------------------------------------------------------------

    def start(self) -> Self:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, self.host, self.port)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("TCP proxy did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def bytes_down(self) -> int:
        """Bytes relayed from the upstream to clients since the start."""
        with self._lock:
            return self._down

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return self._up

    def partition(self) -> None:
        """Cut every connection and refuse new ones until `heal()`."""
        self._partitioned = True
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    def heal(self) -> None:
        self._partitioned = False

    def cut_next_answer(self) -> None:
        """On the next connection whose client sends something from now on, the first
        bytes the upstream sends back are dropped and both sides are reset. On a kept
        connection that is the answer to the request sent, read by the upstream."""
        self._cut_armed = True

    # -- proxy loop ------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._partitioned:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        sent = [False]  # the client sent something while a cut was armed
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, downstream=False, sent=sent),
                self._pipe(up_reader, writer, downstream=True, sent=sent),
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
        sent: list[bool],
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while piece := await reader.read(PIECE):
                if not downstream and self._cut_armed:
                    sent[0] = True
                elif downstream and self._cut_armed and sent[0]:
                    self._cut_armed = False  # one answer lost: the connection goes with it
                    self.answers_cut += 1
                    break
                with self._lock:
                    if downstream:
                        self._down += len(piece)
                    else:
                        self._up += len(piece)
                writer.write(piece)
                await writer.drain()
        # one side closed: close the other, so the relay never half-hangs
        writer.transport.abort()
