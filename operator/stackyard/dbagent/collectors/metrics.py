"""pg_stat_database of every database, database sizes; transactions/s, cache hit ratio, connections and deadlocks
(as events) of the monitored database."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from .base import Collector, Family, Previous, Reading, fetch_all

# pg_stat_database columns exported as postgres_exporter does: pg_stat_database_<column>{datid, datname}
COUNTERS = ("xact_commit", "xact_rollback", "blks_read", "blks_hit", "tup_returned", "tup_fetched", "tup_inserted",
            "tup_updated", "tup_deleted", "conflicts", "temp_files", "temp_bytes", "deadlocks")
GAUGES = ("numbackends",)


async def collect_metrics(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    """Every database's statistics and size; the monitored database's rates and deadlocks (as events)."""
    reading = Reading()
    columns = ", ".join(GAUGES + COUNTERS)
    stats = await fetch_all(
        conn,
        f"SELECT datid::text, datname, datname = current_database(), {columns} FROM pg_stat_database"
        " WHERE datname IS NOT NULL ORDER BY datname",  # the row of shared objects has no database: skipped
    )
    sizes = await fetch_all(
        conn,
        "SELECT datname, pg_database_size(datname) FROM pg_database"
        " WHERE datallowconn AND has_database_privilege(datname, 'CONNECT') ORDER BY datname",
    )
    for index, name in enumerate(GAUGES + COUNTERS):
        reading.labelled[f"pg_stat_database_{name}"] = [
            ({"datid": row[0], "datname": row[1]}, float(row[3 + index] or 0)) for row in stats
        ]
    reading.labelled["pg_database_size_bytes"] = [({"datname": name}, float(size)) for name, size in sizes]
    (own,) = [dict(zip(("datid", "datname", "current", *GAUGES, *COUNTERS), row)) for row in stats if row[2]]
    now = time.monotonic()
    transactions = int(own["xact_commit"]) + int(own["xact_rollback"])
    if previous.transactions is not None:
        then, before = previous.transactions
        reading.values["transactions_per_second"] = max(0.0, (transactions - before) / max(now - then, 1e-6))
    previous.transactions = (now, transactions)
    total_blocks = int(own["blks_hit"]) + int(own["blks_read"])
    reading.values["cache_hit_ratio"] = (int(own["blks_hit"]) / total_blocks) if total_blocks else 1.0
    reading.values["connections"] = float(own["numbackends"])
    reading.values["database_size_bytes"] = next((float(s) for n, s in sizes if n == own["datname"]), 0.0)
    deadlocks = int(own["deadlocks"])
    if previous.deadlocks is not None and deadlocks > previous.deadlocks:
        reading.rows["deadlock_events"] = [(own["datname"], deadlocks - previous.deadlocks)]
    previous.deadlocks = deadlocks
    reading.values["deadlocks_total"] = float(deadlocks)
    reading.rows["metrics_history"] = [(name, value) for name, value in sorted(reading.values.items())]
    return reading


COLLECTOR = Collector(
    "metrics", 1.0, collect_metrics,
    values=("transactions_per_second", "cache_hit_ratio", "connections", "database_size_bytes", "deadlocks_total"),
    families={
        **{f"pg_stat_database_{n}": Family("gauge", f"pg_stat_database.{n}") for n in GAUGES},
        **{f"pg_stat_database_{n}": Family("counter", f"pg_stat_database.{n}") for n in COUNTERS},
        "pg_database_size_bytes": Family("gauge", "disk space used by the database"),
    },
)
