"""Sessions by database and state from pg_stat_activity, waiting sessions, the longest active query, and the
server's max_connections (what "connections near the limit" compares with)."""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Collector, Family, Previous, Reading, fetch_all

# postgres_exporter's states: every (database, state) pair is exported, with 0 for the absent ones.
ACTIVITY_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)", "fastpath function call",
                   "disabled")


async def collect_activity(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    databases = [name for (name,) in await fetch_all(conn, "SELECT datname FROM pg_database ORDER BY datname")]
    rows = await fetch_all(
        conn,
        "SELECT datname, coalesce(state, 'unknown'), wait_event_type IS NOT NULL AND wait_event_type = 'Lock',"
        " EXTRACT(EPOCH FROM (clock_timestamp() - query_start))::float8"
        " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    (limit,) = (await fetch_all(conn, "SELECT current_setting('max_connections')::float8"))[0]
    by_state: dict[str, int] = {}
    by_database: dict[tuple[str, str], int] = {(d, s): 0 for d in databases for s in ACTIVITY_STATES}
    longest = 0.0
    waiting = 0
    for database, state, waits, seconds in rows:
        by_state[state] = by_state.get(state, 0) + 1
        if database is not None and (database, state) in by_database:
            by_database[database, state] += 1
        waiting += 1 if waits else 0
        if state == "active" and seconds:
            longest = max(longest, float(seconds))
    total = len(rows)
    reading = Reading()
    reading.rows["activity_snapshots"] = [(
        total, by_state.get("active", 0), by_state.get("idle", 0), by_state.get("idle in transaction", 0), waiting,
        longest,
    )]
    reading.values.update(active_sessions=by_state.get("active", 0), waiting_sessions=waiting,
                          longest_query_seconds=longest, sessions=total)
    reading.labelled["pg_stat_activity_count"] = [
        ({"datname": d, "state": s}, float(n)) for (d, s), n in sorted(by_database.items())
    ]
    reading.labelled["pg_settings_max_connections"] = [({}, float(limit))]
    return reading


COLLECTOR = Collector(
    "activity", 2.0, collect_activity,
    values=("active_sessions", "waiting_sessions", "longest_query_seconds", "sessions"),
    families={"pg_stat_activity_count": Family("gauge", "number of connections in this state"),
              "pg_settings_max_connections": Family("gauge", "Server Parameter: max_connections")},
)
