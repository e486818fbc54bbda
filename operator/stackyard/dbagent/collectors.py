"""What the sidecar reads from PostgreSQL: one function per collector, each on the instance's own connection.

Each returns the rows to keep in SQLite and the gauges to export and alert on.
Counters (deadlocks, transactions, query statistics) are turned into deltas
against the previous reading, kept in `Previous`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg


@dataclass
class Reading:
    """One collection: rows per SQLite table, and named values for metrics and alert rules."""

    rows: dict[str, list[tuple]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    labelled: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    note: str | None = None


@dataclass
class Previous:
    """Counter readings from the last cycle, per instance."""

    statements: dict[str, tuple[int, float, int]] | None = None
    deadlocks: int | None = None
    transactions: tuple[float, int] | None = None


ACTIVITY_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)", "fastpath function call",
                   "disabled")


async def _all(conn: psycopg.AsyncConnection, query: str) -> list[tuple]:
    cursor = await conn.execute(query)
    return await cursor.fetchall()


async def collect_activity(conn: psycopg.AsyncConnection, previous: Previous, top: int) -> Reading:
    rows = await _all(
        conn,
        "SELECT coalesce(state, 'unknown'), wait_event_type IS NOT NULL AND wait_event_type = 'Lock',"
        " EXTRACT(EPOCH FROM (clock_timestamp() - query_start))::float8"
        " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    by_state: dict[str, int] = {}
    longest = 0.0
    waiting = 0
    for state, waits, seconds in rows:
        by_state[state] = by_state.get(state, 0) + 1
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
    states = {state: 0 for state in ACTIVITY_STATES} | by_state
    reading.labelled["pg_stat_activity_count"] = [({"state": s}, float(n)) for s, n in sorted(states.items())]
    return reading


async def collect_queries(conn: psycopg.AsyncConnection, previous: Previous, top: int) -> Reading:
    reading = Reading()
    installed = await _all(conn, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    if not installed:
        reading.note = "query stats skipped: the pg_stat_statements extension is not installed (CREATE EXTENSION)"
        return reading
    try:
        rows = await _all(
            conn,
            "SELECT queryid::text, left(query, 500), calls, total_exec_time, rows FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
    except psycopg.errors.ObjectNotInPrerequisiteState:
        await conn.rollback()
        reading.note = "query stats skipped: pg_stat_statements is not in shared_preload_libraries"
        return reading
    current = {qid: (int(calls), float(total), int(nrows)) for qid, _q, calls, total, nrows in rows if qid}
    texts = {qid: q for qid, q, *_ in rows if qid}
    if previous.statements is not None:
        deltas = []
        for qid, (calls, total, nrows) in current.items():
            old_calls, old_total, old_rows = previous.statements.get(qid, (0, 0.0, 0))
            d_calls, d_total = calls - old_calls, total - old_total
            if d_calls > 0:
                deltas.append((qid, texts[qid], d_calls, d_total, d_total / d_calls, nrows - old_rows))
        deltas.sort(key=lambda d: d[3], reverse=True)
        reading.rows["query_stats"] = deltas[:top]
    previous.statements = current
    return reading


async def collect_replication(conn: psycopg.AsyncConnection, previous: Previous, top: int) -> Reading:
    reading = Reading()
    standby = (await _all(conn, "SELECT pg_is_in_recovery()"))[0][0]
    if standby:
        (lag_seconds, lag_bytes), = await _all(
            conn,
            "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
            " ELSE EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8 END,"
            " coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint",
        )
        lag_seconds = float(lag_seconds or 0.0)
        reading.rows["replication_lag_history"] = [("standby", "self", lag_seconds, int(lag_bytes or 0))]
        reading.values["replication_lag_seconds"] = lag_seconds
        reading.labelled["pg_replication_lag_seconds"] = [({"role": "standby", "replica": "self"}, lag_seconds)]
        return reading
    rows = await _all(
        conn,
        "SELECT coalesce(application_name, client_addr::text, pid::text),"
        " coalesce(EXTRACT(EPOCH FROM replay_lag)::float8, 0),"
        " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint FROM pg_stat_replication",
    )
    reading.rows["replication_lag_history"] = [("primary", name, float(sec), int(b)) for name, sec, b in rows]
    reading.values["replication_lag_seconds"] = max((float(sec) for _n, sec, _b in rows), default=0.0)
    reading.values["replicas"] = float(len(rows))
    reading.labelled["pg_replication_lag_seconds"] = [
        ({"role": "primary", "replica": name}, float(sec)) for name, sec, _b in rows
    ]
    return reading


async def collect_locks(conn: psycopg.AsyncConnection, previous: Previous, top: int) -> Reading:
    reading = Reading()
    blocked = await _all(
        conn,
        "SELECT a.pid, pg_blocking_pids(a.pid), l.mode, coalesce(l.relation::regclass::text, l.locktype),"
        " EXTRACT(EPOCH FROM (clock_timestamp() - a.state_change))::float8, left(a.query, 300)"
        " FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted"
        " WHERE cardinality(pg_blocking_pids(a.pid)) > 0",
    )
    counts = await _all(conn, "SELECT mode, count(*) FROM pg_locks GROUP BY mode ORDER BY mode")
    reading.rows["lock_snapshots"] = [
        (pid, list(blocking), mode, relation, float(wait or 0), query) for pid, blocking, mode, relation, wait, query in blocked
    ]
    reading.values["blocked_sessions"] = float(len(blocked))
    reading.labelled["pg_locks_count"] = [({"mode": mode}, float(n)) for mode, n in counts]
    return reading


async def collect_metrics(conn: psycopg.AsyncConnection, previous: Previous, top: int) -> Reading:
    """Transactions/s, cache hit ratio, connections, size, and deadlocks (as events)."""
    reading = Reading()
    (datname, commits, rollbacks, hit, read, backends, deadlocks, size), = await _all(
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


COLLECTOR_FUNCTIONS: dict[str, Any] = {
    "activity": collect_activity,
    "queries": collect_queries,
    "replication": collect_replication,
    "locks": collect_locks,
    "metrics": collect_metrics,
}
