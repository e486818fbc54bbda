"""Network faults a test can inject: a TCP proxy it owns, and a PostgreSQL it can freeze.

`BlackholeProxy` forwards TCP between clients and a server until told to go
silent: then it stops reading from either side (nothing is lost, nothing is
delivered, no reset is sent: what a partition or an idle-timeout NAT does),
and new connections are accepted but never connected onwards. `heal()` resumes
forwarding what the kernel buffered. It runs in its own thread and loop, so it
keeps working whatever the test's loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator

import psutil
import psycopg

from stackyard.store.embedded import free_port

from .emulator import LoopThread


class BlackholeProxy:
    """127.0.0.1:<port> -> target; `silence()` / `heal()` switch forwarding off and on for every connection."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.thread = LoopThread("blackhole-proxy")
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def start(self) -> "BlackholeProxy":
        async def start() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

        self.thread.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        try:
            self.thread.run(stop(), timeout=10)
        finally:
            self.thread.stop()

    def silence(self) -> None:
        """Stop delivering anything, in both directions, on every connection, old and new."""
        self.thread.run(self._set(False))

    def heal(self) -> None:
        self.thread.run(self._set(True))

    async def _set(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._writers.add(client_writer)
        try:
            await self._flowing.wait()  # a silent network: the connection is accepted but leads nowhere
            server_reader, server_writer = await asyncio.open_connection(*self.target)
            self._writers.add(server_writer)
            await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer),
                                 return_exceptions=True)
        except OSError:
            pass
        finally:
            client_writer.transport.abort()
            self._writers.discard(client_writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # data read before the silence is held, not delivered
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by this proxy's."""
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        info.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo(**info)


def target_of(database_url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)


@contextlib.contextmanager
def blackhole_proxy(database_url: str) -> Iterator[BlackholeProxy]:
    proxy = BlackholeProxy(*target_of(database_url)).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def postgres_processes(postmaster_pid: int) -> list[psutil.Process]:
    """The postmaster and every backend and auxiliary process it started."""
    postmaster = psutil.Process(postmaster_pid)
    return [postmaster, *postmaster.children(recursive=True)]


@contextlib.contextmanager
def frozen(postmaster_pid: int) -> Iterator[None]:
    """SIGSTOP a PostgreSQL server (all its processes) for the duration of the block: it hangs, it does not fail."""
    processes = postgres_processes(postmaster_pid)
    for process in processes:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
