"""The embedded PostgreSQL is stopped by whoever owns it, and adopted when its owner was killed (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from stackyard.store.embedded import EmbeddedPostgres
from stackyard.store.location import database_url

HOLDER = """
import sys, time
from stackyard.store.location import database_url
with database_url(None, sys.argv[1]) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def _hold(data_dir: Path) -> subprocess.Popen:
    """A process that starts the embedded server and holds it until killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().startswith("postgresql://")
    return holder


def test_a_server_left_behind_by_a_killed_owner_is_adopted_and_stopped(tmp_path):
    holder = _hold(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    server = EmbeddedPostgres(tmp_path)
    assert server.is_running(), "kill -9 leaves the server running"
    try:
        with database_url(None, tmp_path) as url:
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not server.is_running(), "the adopter stops the orphan on exit"
    finally:
        server.stop(mode="immediate")


def test_a_server_whose_owner_is_alive_is_left_running(tmp_path):
    holder = _hold(tmp_path)
    server = EmbeddedPostgres(tmp_path)
    try:
        with database_url(None, tmp_path) as url:
            with psycopg.connect(url) as conn:
                conn.execute("SELECT 1")
        assert server.is_running(), "another live process owns it"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        server.stop(mode="immediate")
