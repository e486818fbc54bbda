"""Replication lag: per replica on a primary, receive/replay lag on a standby."""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Collector, Family, Previous, Reading, fetch_all


async def collect_replication(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    reading = Reading()
    standby = (await fetch_all(conn, "SELECT pg_is_in_recovery()"))[0][0]
    if standby:
        (lag_seconds, lag_bytes), = await fetch_all(
            conn,
            "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
            " ELSE EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8 END,"
            " coalesce(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint",
        )
        lag_seconds = float(lag_seconds or 0.0)
        reading.rows["replication_lag_history"] = [("standby", "self", lag_seconds, int(lag_bytes or 0))]
        reading.values["replication_lag_seconds"] = lag_seconds
        reading.labelled["pg_replication_lag_seconds"] = [({}, lag_seconds)]
        reading.labelled["pg_replication_is_replica"] = [({}, 1.0)]
        return reading
    rows = await fetch_all(
        conn,
        "SELECT coalesce(application_name, client_addr::text, pid::text),"
        " coalesce(EXTRACT(EPOCH FROM replay_lag)::float8, 0),"
        " coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint FROM pg_stat_replication",
    )
    reading.rows["replication_lag_history"] = [("primary", name, float(sec), int(b)) for name, sec, b in rows]
    reading.values["replication_lag_seconds"] = max((float(sec) for _n, sec, _b in rows), default=0.0)
    reading.values["replicas"] = float(len(rows))
    reading.labelled["pg_replication_is_replica"] = [({}, 0.0)]
    reading.labelled["stackyard_dbagent_replica_lag_seconds"] = [({"replica": name}, float(sec)) for name, sec, _b in rows]
    reading.labelled["stackyard_dbagent_replica_lag_bytes"] = [({"replica": name}, float(b)) for name, _s, b in rows]
    return reading


COLLECTOR = Collector(
    "replication", 2.0, collect_replication, values=("replication_lag_seconds", "replicas"),
    families={
        "pg_replication_lag_seconds": Family("gauge", "replication lag behind master in seconds (on a standby)"),
        "pg_replication_is_replica": Family("gauge", "whether the server is a standby"),
        "stackyard_dbagent_replica_lag_seconds": Family("gauge", "replay lag of each replica, seen from the primary"),
        "stackyard_dbagent_replica_lag_bytes": Family("gauge", "WAL bytes each replica has not replayed yet"),
    },
)
