"""`stackyard db migrate` and `stackyard db url`, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from stackyard.store.embedded import EmbeddedPostgres
from stackyard.store.migrate import VERSION_TABLE, available_migrations

from .processes import stackyard


def test_db_migrate_against_a_given_url(empty_db_url):
    first = stackyard("db", "migrate", env={"STACKYARD_DATABASE_URL": empty_db_url})
    assert first.returncode == 0, first.stderr
    assert "applied migrations 0001" in first.stderr
    second = stackyard("db", "migrate", "--database-url", empty_db_url)
    assert second.returncode == 0 and "nothing to apply" in second.stderr
    url = stackyard("db", "url", env={"STACKYARD_DATABASE_URL": empty_db_url})
    assert url.stdout.strip() == empty_db_url


def test_db_migrate_starts_and_stops_the_embedded_postgres(tmp_path):
    data_dir = tmp_path / "state"
    result = stackyard("db", "migrate", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "using embedded PostgreSQL" in result.stderr and str(data_dir) in result.stderr
    server = EmbeddedPostgres(data_dir)
    assert not server.is_running(), "the command stops the server it started"
    not_running = stackyard("db", "url", "--data-dir", str(data_dir))
    assert not_running.returncode == 1 and "not running" in not_running.stderr

    server.start()
    try:
        url = stackyard("db", "url", "--data-dir", str(data_dir))
        assert url.returncode == 0 and url.stdout.strip() == server.url("stackyard")
        with psycopg.connect(server.url("stackyard")) as conn:
            versions = [r[0] for r in conn.execute(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")]
        assert versions == [m.version for m in available_migrations()]
        # a server someone else started is reused and left running
        again = stackyard("db", "migrate", "--data-dir", str(data_dir))
        assert again.returncode == 0 and "nothing to apply" in again.stderr
        assert server.is_running()
    finally:
        server.stop()


def test_db_migrate_reports_an_unreachable_database_clearly():
    result = stackyard("db", "migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert result.returncode == 1
    assert "db failed" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_option_with_env_and_default():
    result = stackyard("db", "migrate", "--help")
    assert result.returncode == 0
    for flag, env in (
        ("--database-url", "STACKYARD_DATABASE_URL"),
        ("--data-dir", "STACKYARD_DATA_DIR"),
        ("--log-level", "STACKYARD_LOG_LEVEL"),
        ("--log-format", "STACKYARD_LOG_FORMAT"),
    ):
        assert flag in result.stdout and env in result.stdout


def test_commands_print_no_runtime_dir_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    result = subprocess.run([sys.executable, "-m", "stackyard", "db", "url", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "not running" in result.stderr
    assert "XDG_RUNTIME_DIR" not in result.stderr and "Warning" not in result.stderr
