"""Lock waits with who blocks whom, and locks by database and mode."""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Collector, Family, Previous, Reading, fetch_all

# postgres_exporter's modes, lower-case; every (database, mode) pair is exported, with 0 for the absent ones.
LOCK_MODES = ("accesssharelock", "rowsharelock", "rowexclusivelock", "shareupdateexclusivelock", "sharelock",
              "sharerowexclusivelock", "exclusivelock", "accessexclusivelock", "sireadlock")


async def collect_locks(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    reading = Reading()
    blocked = await fetch_all(
        conn,
        "SELECT a.pid, pg_blocking_pids(a.pid), l.mode, coalesce(l.relation::regclass::text, l.locktype),"
        " EXTRACT(EPOCH FROM (clock_timestamp() - a.state_change))::float8, left(a.query, 300)"
        " FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted"
        " WHERE cardinality(pg_blocking_pids(a.pid)) > 0",
    )
    counts = await fetch_all(
        conn,
        "SELECT d.datname, m.mode, coalesce(l.count, 0) FROM pg_database d"
        " CROSS JOIN unnest(%s::text[]) AS m(mode)"
        " LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count FROM pg_locks"
        "            WHERE database IS NOT NULL GROUP BY database, lower(mode)) l"
        "   ON l.database = d.oid AND l.mode = m.mode ORDER BY 1, 2",
        (list(LOCK_MODES),),
    )
    reading.rows["lock_snapshots"] = [
        (pid, list(blocking), mode, relation, float(wait or 0), query) for pid, blocking, mode, relation, wait, query in blocked
    ]
    reading.values["blocked_sessions"] = float(len(blocked))
    reading.labelled["pg_locks_count"] = [({"datname": d, "mode": m}, float(n)) for d, m, n in counts]
    return reading


COLLECTOR = Collector(
    "locks", 2.0, collect_locks, values=("blocked_sessions",),
    families={"pg_locks_count": Family("gauge", "number of locks")},
)
