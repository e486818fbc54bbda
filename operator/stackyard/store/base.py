"""The pool, the deadlines every database call runs under, the store's errors and small shared helpers.

A connection that says nothing is not alive (docs/architecture.md, "Database
deadlines"): every connection gets a connect timeout, TCP keepalives and a TCP
user timeout; every pooled connection is checked before use (`connection()`:
a socket with something to read while idle was closed by the server, or holds
an error, so it is tried with an empty query and replaced at once if broken,
where psycopg_pool's own check would back off for a second per broken
connection) and has a server-side statement timeout; and every public call of
the store runs under a client-side deadline. A call that misses its deadline raises
`DatabaseTimeout` at once while its connection is cancelled and discarded in
the background (psycopg cancels the query, and closes the connection when the
server does not answer the cancel either).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import select
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

T = TypeVar("T")

# libpq connection parameters of every stackyard connection (pooled and LISTEN): give up connecting after
# CONNECT_TIMEOUT, probe an idle connection with TCP keepalives, and let the kernel fail a connection whose
# sent data stays unacknowledged for TCP_USER_TIMEOUT_MS (a partition that drops packets without a reset).
CONNECT_TIMEOUT = 5
TCP_USER_TIMEOUT_MS = 10_000


def connection_kwargs(connect_timeout: int = CONNECT_TIMEOUT) -> dict[str, Any]:
    """libpq keywords for a connection that notices a silent network (ignored on unix sockets)."""
    return {"connect_timeout": connect_timeout, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
            "keepalives_count": 3, "tcp_user_timeout": TCP_USER_TIMEOUT_MS}


class StoreError(Exception):
    """Base of the errors the store raises on purpose."""


class NotFound(StoreError):
    """The row asked for does not exist (or is soft-deleted)."""


class Conflict(StoreError):
    """The write would break a uniqueness rule; retrying will not help until input changes."""


class NotPermitted(StoreError):
    """A target names an agent that neither lives in the target's namespace nor grants it access."""


class Immutable(StoreError):
    """The write would change a value that is fixed once the row exists."""


class NotTargeted(StoreError):
    """An agent referred to deployment objects of stacks that are not targeted to it."""

    def __init__(self, ids: Sequence[uuid.UUID]):
        super().__init__(f"deployment objects not targeted to this agent: {', '.join(map(str, ids))}")
        self.ids = list(ids)


class DatabaseTimeout(psycopg.OperationalError):
    """A database call missed its deadline; its connection is being discarded. Retry later."""


def columns(row_type: type, alias: str = "") -> str:
    """The SELECT list of a row dataclass: its field names, in order, optionally qualified by a table alias."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + f.name for f in dataclasses.fields(row_type))


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve the outcome of a call abandoned at its deadline, so nothing is logged as never retrieved."""
    if not task.cancelled():
        task.exception()


async def within(seconds: float | None, call: Awaitable[T], what: str = "database call") -> T:
    """Await `call` for at most `seconds`; on expiry raise DatabaseTimeout and let it unwind in the background.

    The caller gets its answer at the deadline, not after psycopg has finished cancelling the statement
    (which takes up to its own timeouts when the server is hung). A caller that is itself cancelled (a client
    that went away) cancels the call too.
    """
    if seconds is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_consume)
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(_consume)
    raise DatabaseTimeout(f"{what} did not complete within {seconds:g} s")


def with_deadlines(cls: type[T]) -> type[T]:
    """Wrap every public coroutine method of a store class so that it runs within `self.deadline`."""
    for klass in reversed(cls.__mro__):
        for name, method in list(vars(klass).items()):
            if name.startswith("_") or name in NO_DEADLINE or not inspect.iscoroutinefunction(method):
                continue
            if getattr(getattr(cls, name), "__bounded__", False):
                continue
            setattr(cls, name, _bounded(getattr(cls, name)))
    return cls


NO_DEADLINE = frozenset({"open", "close", "ping"})  # ping has its own timeout


def _bounded(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: StoreBase, *args: Any, **kwargs: Any) -> T:
        return await within(self.deadline, method(self, *args, **kwargs), f"store call {method.__name__}")

    wrapper.__bounded__ = True  # type: ignore[attr-defined]
    return wrapper


class StoreBase:
    """The pool and the deadline shared by the query classes that make up `Store`."""

    def __init__(self, pool: AsyncConnectionPool, deadline: float | None = None):
        self.pool = pool
        self.deadline = deadline

    @classmethod
    async def open(
        cls: type[S], url: str, min_size: int = 1, max_size: int = 10, timeout: float = 30.0,
        open_timeout: float = 30.0, deadline: float | None = None, statement_timeout: float | None = None,
    ) -> S:
        """Open a pool on `url` and wait (up to `open_timeout`) until it has its first connection.

        `timeout` bounds how long a caller waits for a free connection; `deadline` bounds every call as a whole
        (None: unbounded, for tools); `statement_timeout` is set on every connection so that the server, too,
        gives up on a statement. Connections are checked before use (a restart leaves none broken in the pool),
        and are in autocommit mode: a single statement needs no BEGIN/COMMIT round trips; every multi-statement
        write uses an explicit transaction block.
        """

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            if statement_timeout is not None:
                await conn.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")

        pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                                   kwargs={"autocommit": True, **connection_kwargs()}, configure=configure)
        await pool.open(wait=True, timeout=open_timeout)
        return cls(pool, deadline)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection that is not known to be broken (see the module's docstring)."""
        for _attempt in range(self.pool.max_size + 1):
            conn = await self.pool.getconn(timeout)
            if _idle_socket_readable(conn):
                try:
                    await conn.execute("")
                except psycopg.Error as exc:
                    log.debug("discarding a pooled connection that failed its check: %s", exc)
                    await self.pool.putconn(conn)  # broken: the pool closes it and makes a new one
                    continue
            try:
                yield conn
            finally:
                await self.pool.putconn(conn)
            return
        raise psycopg.OperationalError("every pooled connection was broken; the database restarted or went away")

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the database answers within `timeout` seconds."""
        await within(timeout, self._ping(timeout), "ping")

    async def _ping(self, timeout: float) -> None:
        async with self.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")


S = TypeVar("S", bound=StoreBase)


def _idle_socket_readable(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True when an idle connection's socket has something to read: the server closed it (EOF, an error
    message), or it holds a notice. Either way it deserves a real check; a healthy idle socket is silent."""
    try:
        poller = select.poll()  # not select(): no limit on the descriptor's number (a fleet holds thousands)
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.OperationalError):
        return True


async def replace_metadata(
    conn: psycopg.AsyncConnection[Any], object_id: uuid.UUID, labels: Iterable[str], annotations: Mapping[str, str]
) -> None:
    """Make an object's labels and annotations exactly the given ones."""
    label_list = sorted(set(labels))
    await conn.execute(
        "DELETE FROM labels WHERE external_object_id = %s AND NOT (label = ANY(%s))", (object_id, label_list)
    )
    if label_list:
        await conn.execute(
            "INSERT INTO labels (external_object_id, label) SELECT %s, unnest(%s::varchar[])"
            " ON CONFLICT (external_object_id, label) DO NOTHING",
            (object_id, label_list),
        )
    keys = sorted(annotations)
    await conn.execute(
        "DELETE FROM annotations WHERE external_object_id = %s AND NOT (key = ANY(%s))", (object_id, keys)
    )
    if keys:
        await conn.execute(
            "INSERT INTO annotations (external_object_id, key, value)"
            " SELECT %s, k, v FROM unnest(%s::varchar[], %s::text[]) AS u(k, v)"
            " ON CONFLICT (external_object_id, key) DO UPDATE SET value = EXCLUDED.value"
            " WHERE annotations.value IS DISTINCT FROM EXCLUDED.value",
            (object_id, keys, [annotations[k] for k in keys]),
        )
