"""Shared fixtures: one real PostgreSQL per test session (worker), a fresh database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from stackyard.store import Store, migrate
from stackyard.store.embedded import EmbeddedPostgres

if TYPE_CHECKING:
    from .api_harness import RunningApi
    from .emulator import KubeServer
    from .operator_harness import Cluster, OperatorThread


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a maintenance database on a real PostgreSQL server.

    `STACKYARD_TEST_DATABASE_URL` points at an external server; otherwise an
    embedded PostgreSQL 18 from the wheel runs for this session.
    """
    external = os.environ.get("STACKYARD_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(
        tmp_path_factory.mktemp("pg"),
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "300"},
    )
    server.start()
    try:
        yield server.url()
    finally:
        server.stop(mode="immediate")


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    """Name of a database holding the migrated schema, copied for every test."""
    name = f"stackyard_template_{_worker()}_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(with_database(pg_server, name))
    return name


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def _fresh_database(pg_server: str, template: str | None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        conn.execute(query)
    try:
        yield with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    """URL of a fresh database with the current schema, private to this test."""
    yield from _fresh_database(pg_server, template_db)


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh, empty database (no schema), private to this test."""
    yield from _fresh_database(pg_server, None)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url, max_size=20)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection]:
    """A plain autocommit connection to the test's database, for raw SQL checks."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def kube_server() -> Iterator["KubeServer"]:
    """An emulated Kubernetes API server (kmock) with stackyard's CRDs, private to this test."""
    from .emulator import KubeServer

    server = KubeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def encryption_key_file(tmp_path: Path) -> str:
    """A fresh key file (one AES-256 key), as `stackyard run` generates beside the embedded PostgreSQL."""
    from stackyard.encryption import generate_key_file

    path = tmp_path / "encryption.key"
    generate_key_file(path)
    return str(path)


@pytest.fixture
def operator(kube_server, db_url, encryption_key_file) -> Iterator["OperatorThread"]:
    """A real Kopf operator loop against the emulator and this test's database."""
    from .operator_harness import OperatorThread, operator_config

    config = operator_config(db_url, kube_server, encryption_key_file=encryption_key_file)
    running = OperatorThread(kube_server, config).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def cluster(kube_server) -> AsyncIterator["Cluster"]:
    """kubectl for the test: a client of the emulated API server in the test's own loop."""
    import kopf

    from .kubectl import KubeClient
    from .operator_harness import Cluster

    client = KubeClient(kopf.ConnectionInfo(server=kube_server.url, insecure=True))
    try:
        yield Cluster(client)
    finally:
        await client.close()


@pytest.fixture
async def operator_api(db_url, operator, encryption_key_file) -> AsyncIterator["RunningApi"]:
    """The agent API over the test's database, with the operator running (the whole management side)."""
    from .api_harness import running_api

    async with running_api(db_url, encryption_key_file=encryption_key_file) as running:
        yield running


@pytest.fixture
async def target() -> AsyncIterator[tuple]:
    """An emulated target cluster and the test's view of it, for an agent to apply into."""
    from .loop_harness import target_cluster

    async with target_cluster() as pair:
        yield pair
