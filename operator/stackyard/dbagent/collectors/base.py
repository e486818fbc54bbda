"""What every collector shares: the reading it returns, the counters it keeps between cycles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass
class Reading:
    """One collection: rows per SQLite table, and named values for metrics and alert rules."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    labelled: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    note: str | None = None


@dataclass
class Previous:
    """Counter readings from the last cycle, per instance."""

    statements: dict[str, tuple[int, float, int]] | None = None
    deadlocks: int | None = None
    transactions: tuple[float, int] | None = None
    query_cycles: int = 0
    texts_kept_at: dict[str, int] = field(default_factory=dict)  # queryid -> the cycle its text was last stored


async def fetch_all(conn: psycopg.AsyncConnection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


CollectFn = Callable[[psycopg.AsyncConnection[Any], Previous, int], Awaitable[Reading]]


@dataclass(frozen=True)
class Family:
    """One exported Prometheus family: its type (`gauge` or `counter`, named as postgres_exporter names it) and help."""

    type: str
    help: str


@dataclass(frozen=True)
class Collector:
    """One collector: its name (config key, task and table prefix), default interval and function, the values
    its readings offer to alert rules, and the Prometheus families it exports (labels besides `server`)."""

    name: str
    default_interval: float
    collect: CollectFn
    values: tuple[str, ...] = ()
    families: dict[str, Family] = field(default_factory=dict)
