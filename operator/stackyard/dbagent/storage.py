"""The sidecar's history in SQLite (WAL): schema, migrations, writes, retention, agent_status."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")

# table -> its data columns (besides id, timestamp, instance_name)
DATA_TABLES: dict[str, str] = {
    "activity_snapshots": "total INTEGER, active INTEGER, idle INTEGER, idle_in_transaction INTEGER,"
                          " waiting INTEGER, longest_query_seconds REAL",
    "query_stats": "queryid TEXT, query TEXT, calls INTEGER, total_time_ms REAL, mean_time_ms REAL, rows INTEGER",
    "replication_lag_history": "role TEXT, replica TEXT, lag_seconds REAL, lag_bytes INTEGER",
    "lock_snapshots": "pid INTEGER, blocking_pids TEXT, mode TEXT, relation TEXT, wait_seconds REAL, query TEXT",
    "deadlock_events": "database TEXT, count INTEGER",
    "metrics_history": "metric TEXT, value REAL",
    "alert_events": "rule TEXT, metric TEXT, state TEXT, value REAL, threshold REAL, message TEXT",
}
# retention key of the config -> table
RETENTION_TABLE = {
    "activity": "activity_snapshots", "queries": "query_stats", "replication": "replication_lag_history",
    "locks": "lock_snapshots", "deadlocks": "deadlock_events", "metrics": "metrics_history", "alerts": "alert_events",
}


class InvalidStatus(ValueError):
    """An agent_status row that breaks the validation rules."""


@dataclass(frozen=True)
class AgentStatus:
    pid: int
    start_time: float
    last_collect: float
    version: str
    config_hash: str

    def validate(self) -> None:
        if self.pid <= 0:
            raise InvalidStatus(f"pid must be > 0, got {self.pid}")
        if self.start_time > self.last_collect:
            raise InvalidStatus("start_time is after last_collect")
        if not SEMVER.match(self.version):
            raise InvalidStatus(f"version {self.version!r} is not semver")


class History:
    """One SQLite file; every method is a short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=5, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.migrate()

    def close(self) -> None:
        self.db.close()

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def migrate(self) -> None:
        """Create the schema, or bring an older file up to date (version 1 had no instance_name)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS agent_status (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL"
                " CHECK (pid > 0), start_time REAL NOT NULL, last_collect REAL NOT NULL, version TEXT NOT NULL,"
                " config_hash TEXT NOT NULL, CHECK (start_time <= last_collect))"
            )
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS agent_instances (name TEXT PRIMARY KEY, connection_string TEXT NOT NULL,"
                " status TEXT NOT NULL, last_seen REAL, error_message TEXT)"
            )
            for table, columns in DATA_TABLES.items():
                existed = bool(self._columns(table))
                self.db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                    f" timestamp REAL NOT NULL, instance_name TEXT NOT NULL DEFAULT 'default', {columns})"
                )
                if existed and "instance_name" not in self._columns(table):
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN instance_name TEXT NOT NULL DEFAULT 'default'")
                self.db.execute(
                    f"CREATE INDEX IF NOT EXISTS {table}_instance_time ON {table} (instance_name, timestamp)"
                )
                self.db.execute(f"CREATE INDEX IF NOT EXISTS {table}_time ON {table} (timestamp)")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # agent_status ------------------------------------------------------------------

    def start(self, version: str, config_hash: str) -> None:
        now = time.time()
        status = AgentStatus(os.getpid(), now, now, version, config_hash)
        status.validate()
        self.db.execute(
            "INSERT OR REPLACE INTO agent_status (id, pid, start_time, last_collect, version, config_hash)"
            " VALUES (1, ?, ?, ?, ?, ?)",
            (status.pid, status.start_time, status.last_collect, status.version, status.config_hash),
        )

    def collected(self, config_hash: str | None = None) -> None:
        if config_hash is None:
            self.db.execute("UPDATE agent_status SET last_collect = max(?, start_time) WHERE id = 1", (time.time(),))
        else:
            self.db.execute(
                "UPDATE agent_status SET last_collect = max(?, start_time), config_hash = ? WHERE id = 1",
                (time.time(), config_hash),
            )

    def stop(self) -> None:
        self.db.execute("DELETE FROM agent_status WHERE id = 1")

    def status(self) -> AgentStatus | None:
        row = self.db.execute(
            "SELECT pid, start_time, last_collect, version, config_hash FROM agent_status WHERE id = 1"
        ).fetchone()
        return AgentStatus(*row) if row else None

    # instances -------------------------------------------------------------------------

    def set_instance(self, name: str, connection: str, status: str, last_seen: float | None, error: str | None) -> None:
        self.db.execute(
            "INSERT INTO agent_instances (name, connection_string, status, last_seen, error_message)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET connection_string = excluded.connection_string,"
            " status = excluded.status, last_seen = COALESCE(excluded.last_seen, agent_instances.last_seen),"
            " error_message = excluded.error_message",
            (name, connection, status, last_seen, error),
        )

    def remove_instances_except(self, names: Iterable[str]) -> None:
        keep = list(names)
        marks = ",".join("?" for _ in keep) or "''"
        self.db.execute(f"DELETE FROM agent_instances WHERE name NOT IN ({marks})", keep)

    def instances(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT name, connection_string, status, last_seen, error_message FROM agent_instances")
        return {r[0]: {"connection_string": r[1], "status": r[2], "last_seen": r[3], "error_message": r[4]} for r in rows}

    # data ------------------------------------------------------------------------------

    def insert(self, table: str, instance: str, rows: Sequence[Sequence[Any]], at: float | None = None) -> None:
        """Insert data rows (values in the table's column order) for one instance."""
        if not rows:
            return
        columns = [c.split()[0] for c in DATA_TABLES[table].split(",")]
        marks = ",".join("?" for _ in range(len(columns) + 2))
        stamp = time.time() if at is None else at
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                f"INSERT INTO {table} (timestamp, instance_name, {', '.join(columns)}) VALUES ({marks})",
                [(stamp, instance, *[_plain(v) for v in row]) for row in rows],
            )

    def rows(self, table: str, instance: str | None = None) -> list[dict[str, Any]]:
        """Rows of a data table (tests and diagnostics)."""
        if table not in DATA_TABLES:
            raise ValueError(f"unknown table {table!r}")
        cursor = self.db.execute(
            f"SELECT * FROM {table} WHERE (? IS NULL OR instance_name = ?) ORDER BY id", (instance, instance)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def prune(self, retention: dict[str, float], batch: int = 5000, now: float | None = None) -> dict[str, int]:
        """Delete rows older than their table's retention, `batch` rows per transaction."""
        now = time.time() if now is None else now
        removed: dict[str, int] = {}
        for key, table in RETENTION_TABLE.items():
            cutoff = now - retention[key]
            total = 0
            while True:
                cursor = self.db.execute(
                    f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE timestamp < ? LIMIT ?)",
                    (cutoff, batch),
                )
                total += cursor.rowcount
                if cursor.rowcount < batch:
                    break
            removed[table] = total
        return removed


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value
