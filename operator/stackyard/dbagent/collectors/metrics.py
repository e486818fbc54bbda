"""Transactions/s, cache hit ratio, connections, database size, deadlocks (as events)."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from .base import Collector, Previous, Reading, fetch_all


async def collect_metrics(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    """Transactions/s, cache hit ratio, connections, size, and deadlocks (as events)."""
    reading = Reading()
    (datname, commits, rollbacks, hit, read, backends, deadlocks, size), = await fetch_all(
        conn,
        "SELECT datname, xact_commit, xact_rollback, blks_hit, blks_read, numbackends, deadlocks,"
        " pg_database_size(datname) FROM pg_stat_database WHERE datname = current_database()",
    )
    now = time.monotonic()
    transactions = int(commits) + int(rollbacks)
    if previous.transactions is not None:
        then, before = previous.transactions
        reading.values["transactions_per_second"] = max(0.0, (transactions - before) / max(now - then, 1e-6))
    previous.transactions = (now, transactions)
    total_blocks = int(hit) + int(read)
    reading.values["cache_hit_ratio"] = (int(hit) / total_blocks) if total_blocks else 1.0
    reading.values["connections"] = float(backends)
    reading.values["database_size_bytes"] = float(size)
    if previous.deadlocks is not None and int(deadlocks) > previous.deadlocks:
        reading.rows["deadlock_events"] = [(datname, int(deadlocks) - previous.deadlocks)]
    previous.deadlocks = int(deadlocks)
    reading.values["deadlocks_total"] = float(deadlocks)
    reading.rows["metrics_history"] = [(name, value) for name, value in sorted(reading.values.items())]
    counters = {"xact_commit": commits, "xact_rollback": rollbacks, "blks_hit": hit, "blks_read": read,
                "deadlocks": deadlocks, "numbackends": backends}
    for name, value in counters.items():
        reading.labelled[f"pg_stat_database_{name}"] = [({"datname": datname}, float(value))]
    reading.labelled["pg_database_size_bytes"] = [({"datname": datname}, float(size))]
    return reading


COLLECTOR = Collector("metrics", 1.0, collect_metrics)
