"""Lock waits with who blocks whom, and locks by mode."""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Collector, Previous, Reading, fetch_all


async def collect_locks(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    reading = Reading()
    blocked = await fetch_all(
        conn,
        "SELECT a.pid, pg_blocking_pids(a.pid), l.mode, coalesce(l.relation::regclass::text, l.locktype),"
        " EXTRACT(EPOCH FROM (clock_timestamp() - a.state_change))::float8, left(a.query, 300)"
        " FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted"
        " WHERE cardinality(pg_blocking_pids(a.pid)) > 0",
    )
    counts = await fetch_all(conn, "SELECT mode, count(*) FROM pg_locks GROUP BY mode ORDER BY mode")
    reading.rows["lock_snapshots"] = [
        (pid, list(blocking), mode, relation, float(wait or 0), query) for pid, blocking, mode, relation, wait, query in blocked
    ]
    reading.values["blocked_sessions"] = float(len(blocked))
    reading.labelled["pg_locks_count"] = [({"mode": mode}, float(n)) for mode, n in counts]
    return reading


COLLECTOR = Collector("locks", 2.0, collect_locks)
