"""The sidecar's history in SQLite (WAL): schema, migrations, batched writes, retention, agent_status.

Writes are buffered in memory and written by `flush()` in one transaction (the
sidecar flushes every few seconds): one commit per batch instead of one per row
keeps disk writes small. A failed write (disk full, a read-only volume) keeps
the batch, is logged once per episode with the path, and is retried by the next
flush; collection and `/metrics` go on meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
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
# Tables that keep a row only when its values changed for its key, or once a minute at least (KEYFRAME_SECONDS):
# their readings repeat most of the time, and the history is what changed. table -> number of key columns.
CHANGES_ONLY: dict[str, int] = {"metrics_history": 1, "activity_snapshots": 0}
KEYFRAME_SECONDS = 60.0
# Rows kept in memory while writes fail; beyond this the oldest are dropped (and counted).
MAX_PENDING_ROWS = 100_000
# retention key of the config -> table
RETENTION_TABLE = {
    "activity": "activity_snapshots", "queries": "query_stats", "replication": "replication_lag_history",
    "locks": "lock_snapshots", "deadlocks": "deadlock_events", "metrics": "metrics_history", "alerts": "alert_events",
}


class InvalidStatus(ValueError):
    """An agent_status row that breaks the validation rules."""


class StorageError(RuntimeError):
    """The SQLite file cannot be opened or migrated; the message names its path."""


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
    """One SQLite file. Data rows and instance states are buffered and written together by `flush()`."""

    def __init__(self, path: str | Path, on_error: Callable[[], None] | None = None):
        self.path = Path(path)
        self.on_error = on_error
        self.failure: str | None = None  # the last write error, until a write succeeds again
        self.dropped_rows = 0
        self._pending: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._instances: dict[str, tuple[str, str, float | None, str | None]] = {}
        self._last_kept: dict[tuple[str, str, tuple[Any, ...]], tuple[float, tuple[Any, ...]]] = {}
        self._collected_at: float | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=5, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the SQLite database {self.path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}

    def migrate(self) -> None:
        """Create the schema, or bring an older file up to date (1 had no instance_name; 3 adds alert_deliveries
        and drops the second index of each data table)."""
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
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS alert_deliveries (id TEXT PRIMARY KEY, payload TEXT NOT NULL,"
                " created REAL NOT NULL, next_attempt REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT)"
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
                # version 3: retention prunes through the (instance_name, timestamp) index; one index, not two
                self.db.execute(f"DROP INDEX IF EXISTS {table}_time")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # agent_status ------------------------------------------------------------------

    def start(self, version: str, config_hash: str) -> None:
        now = time.time()
        status = AgentStatus(os.getpid(), now, now, version, config_hash)
        status.validate()
        self._write(lambda: self.db.execute(
            "INSERT OR REPLACE INTO agent_status (id, pid, start_time, last_collect, version, config_hash)"
            " VALUES (1, ?, ?, ?, ?, ?)",
            (status.pid, status.start_time, status.last_collect, status.version, status.config_hash),
        ))

    def collected(self, config_hash: str | None = None) -> None:
        """A collection finished: `last_collect` moves with the next flush (a new config hash is written now)."""
        self._collected_at = time.time()
        if config_hash is not None:
            self._write(lambda: self.db.execute("UPDATE agent_status SET config_hash = ? WHERE id = 1", (config_hash,)))

    def stop(self) -> None:
        """Clean shutdown: write what is queued, then remove agent_status."""
        self.flush()
        self._write(lambda: self.db.execute("DELETE FROM agent_status WHERE id = 1"))

    # alert deliveries --------------------------------------------------------------------

    def save_delivery(self, delivery_id: str, payload: dict[str, Any], created: float) -> bool:
        """Keep an alert delivery until its receiver acknowledges it (False: not stored, kept in memory only)."""
        return self._write(lambda: self.db.execute(
            "INSERT OR IGNORE INTO alert_deliveries (id, payload, created, next_attempt, attempts)"
            " VALUES (?, ?, ?, ?, 0)", (delivery_id, json.dumps(payload), created, created)))

    def update_delivery(self, delivery_id: str, next_attempt: float, attempts: int, error: str) -> None:
        self._write(lambda: self.db.execute(
            "UPDATE alert_deliveries SET next_attempt = ?, attempts = ?, last_error = ? WHERE id = ?",
            (next_attempt, attempts, error, delivery_id)))

    def remove_delivery(self, delivery_id: str) -> None:
        self._write(lambda: self.db.execute("DELETE FROM alert_deliveries WHERE id = ?", (delivery_id,)))

    def deliveries(self) -> list[dict[str, Any]]:
        """Alert deliveries not acknowledged yet, oldest first."""
        rows = self.db.execute(
            "SELECT id, payload, created, next_attempt, attempts, last_error FROM alert_deliveries ORDER BY created")
        return [{"id": r[0], "payload": json.loads(r[1]), "created": r[2], "next_attempt": r[3], "attempts": r[4],
                 "last_error": r[5]} for r in rows]

    def status(self) -> AgentStatus | None:
        row = self.db.execute(
            "SELECT pid, start_time, last_collect, version, config_hash FROM agent_status WHERE id = 1"
        ).fetchone()
        return AgentStatus(*row) if row else None

    # instances -------------------------------------------------------------------------

    def set_instance(self, name: str, connection: str, status: str, last_seen: float | None, error: str | None) -> None:
        """An instance's state, written with the next flush."""
        previous = self._instances.get(name)
        if last_seen is None and previous is not None:
            last_seen = previous[2]
        self._instances[name] = (connection, status, last_seen, error)

    def remove_instances_except(self, names: Iterable[str]) -> None:
        keep = list(names)
        for name in list(self._instances):
            if name not in keep:
                del self._instances[name]
        marks = ",".join("?" for _ in keep) or "''"
        self._write(lambda: self.db.execute(f"DELETE FROM agent_instances WHERE name NOT IN ({marks})", keep))

    def instances(self) -> dict[str, dict[str, Any]]:
        """Every instance's stored state (flushes first)."""
        self.flush()
        rows = self.db.execute("SELECT name, connection_string, status, last_seen, error_message FROM agent_instances")
        return {r[0]: {"connection_string": r[1], "status": r[2], "last_seen": r[3], "error_message": r[4]} for r in rows}

    # data ------------------------------------------------------------------------------

    def insert(self, table: str, instance: str, rows: Sequence[Sequence[Any]], at: float | None = None) -> None:
        """Queue data rows (values in the table's column order) for one instance; the next flush writes them."""
        stamp = time.time() if at is None else at
        for row in rows:
            values = tuple(_plain(v) for v in row)
            if table in CHANGES_ONLY and not self._changed(table, instance, values, stamp):
                continue
            self._pending.append((table, (stamp, instance, *values)))
        while len(self._pending) > MAX_PENDING_ROWS:
            self._pending.popleft()
            self.dropped_rows += 1

    def _changed(self, table: str, instance: str, values: tuple[Any, ...], stamp: float) -> bool:
        key = (table, instance, values[:CHANGES_ONLY[table]])
        kept = self._last_kept.get(key)
        if kept is not None and kept[1] == values and stamp - kept[0] < KEYFRAME_SECONDS:
            return False
        self._last_kept[key] = (stamp, values)
        return True

    def flush(self) -> bool:
        """Write everything queued in one transaction; False (and the batch kept) when the write failed."""
        pending = list(self._pending)
        instances = dict(self._instances)
        collected_at = self._collected_at

        def write() -> None:
            with self.db:
                self.db.execute("BEGIN")
                by_table: dict[str, list[tuple[Any, ...]]] = {}
                for table, row in pending:
                    by_table.setdefault(table, []).append(row)
                for table, rows in by_table.items():
                    columns = [c.split()[0] for c in DATA_TABLES[table].split(",")]
                    marks = ",".join("?" for _ in range(len(columns) + 2))
                    self.db.executemany(
                        f"INSERT INTO {table} (timestamp, instance_name, {', '.join(columns)}) VALUES ({marks})", rows)
                self.db.executemany(
                    "INSERT INTO agent_instances (name, connection_string, status, last_seen, error_message)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                    " connection_string = excluded.connection_string, status = excluded.status,"
                    " last_seen = COALESCE(excluded.last_seen, agent_instances.last_seen),"
                    " error_message = excluded.error_message",
                    [(name, *state) for name, state in instances.items()],
                )
                if collected_at is not None:
                    self.db.execute("UPDATE agent_status SET last_collect = max(?, start_time) WHERE id = 1",
                                    (collected_at,))

        if not self._write(write):
            return False
        for _ in pending:
            self._pending.popleft()
        return True

    def _write(self, write: Callable[[], Any]) -> bool:
        """Run one write; record a failure (logged once per episode) instead of raising it."""
        try:
            write()
        except sqlite3.Error as exc:
            if self.failure is None:
                log.error("cannot write the history to %s (%s); collecting in memory and retrying on every flush."
                          " Free space or fix the volume: writing resumes by itself", self.path, exc)
            self.failure = f"{self.path}: {exc}"
            if self.on_error is not None:
                self.on_error()
            return False
        if self.failure is not None:
            log.warning("writing the history to %s works again (%d rows dropped meanwhile)", self.path,
                        self.dropped_rows)
            self.failure = None
        return True

    def rows(self, table: str, instance: str | None = None) -> list[dict[str, Any]]:
        """Rows of a data table (tests and diagnostics); flushes first."""
        if table not in DATA_TABLES:
            raise ValueError(f"unknown table {table!r}")
        self.flush()
        cursor = self.db.execute(
            f"SELECT * FROM {table} WHERE (? IS NULL OR instance_name = ?) ORDER BY id", (instance, instance)
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def prune(self, retention: dict[str, float], batch: int = 5000, now: float | None = None) -> dict[str, int]:
        """Delete rows older than their table's retention, `batch` rows per statement; a failed write is recorded."""
        now = time.time() if now is None else now
        removed: dict[str, int] = {}
        self.flush()

        def prune_all() -> None:
            for key, table in RETENTION_TABLE.items():
                cutoff = now - retention[key]
                removed[table] = 0
                while True:  # oldest first by id (rows are written in time order): stops at the first young row
                    old = [row_id for row_id, stamp in self.db.execute(
                        f"SELECT id, timestamp FROM {table} ORDER BY id LIMIT ?", (batch,)) if stamp < cutoff]
                    if old:
                        self.db.execute(f"DELETE FROM {table} WHERE id IN ({','.join('?' for _ in old)})", old)
                    removed[table] += len(old)
                    if len(old) < batch:
                        break

        self._write(prune_all)
        return removed


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value
