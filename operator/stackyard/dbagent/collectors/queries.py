"""Top-N statements by time from pg_stat_statements, as deltas between cycles.

A statement's text is stored on its first row and again at most every
TEXT_EVERY_CYCLES collections (an hour at the default 5 s); its other rows leave
`query` NULL (the text is the same: join on `queryid`). The texts were 90% of
the sidecar's SQLite growth.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .base import Collector, Previous, Reading, fetch_all

TEXT_EVERY_CYCLES = 720


async def collect_queries(conn: psycopg.AsyncConnection[Any], previous: Previous, top: int) -> Reading:
    reading = Reading()
    installed = await fetch_all(conn, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    if not installed:
        reading.note = "query stats skipped: the pg_stat_statements extension is not installed (CREATE EXTENSION)"
        return reading
    try:
        rows = await fetch_all(
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
        previous.query_cycles += 1
        cycle, kept = previous.query_cycles, previous.texts_kept_at
        rows = []
        for qid, text, *numbers in deltas[:top]:
            if cycle - kept.get(qid, -TEXT_EVERY_CYCLES) >= TEXT_EVERY_CYCLES:
                kept[qid] = cycle
            else:
                text = None
            rows.append((qid, text, *numbers))
        reading.rows["query_stats"] = rows
    previous.statements = current
    return reading


COLLECTOR = Collector("queries", 5.0, collect_queries)  # history only: per-statement series would be unbounded
