"""Secrets in Stacks (README, "Secrets"): shipped by reference, sealed at rest, shown nowhere but to the agent.

The management and target clusters are kmock emulators (no Kubernetes runs here); PostgreSQL, the operator, the
API and the agent are real.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets as random
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest
from psycopg import sql
from prometheus_client import generate_latest

from stackyard.controller.render import InvalidSpec, render_stack
from stackyard.controller.secrets import sealed
from stackyard.controller.stacks import reconcile_stack
from stackyard.encryption import Keyring, generate_key_file, open_content, sealed_key_ids
from stackyard.store import sha256_hex

from .api_harness import make_agent, running_api
from .builders import configmap, stack
from .kubectl import SECRETS
from .loop_harness import setup_loop, start_agent, wait_applied
from .operator_harness import (
    AGENTS,
    STACKS,
    OperatorThread,
    about,
    condition,
    eventually,
    kube_events,
    operator_config,
)
from .processes import stackyard

PROMPT = 5.0  # "within seconds": a labelled Secret's change reaches its Stacks through the watch, not the resync


@pytest.fixture
def operator(kube_server, db_url, encryption_key_file) -> Iterator[OperatorThread]:
    """The operator with its resync far away: what happens within seconds happens through the watch of Secrets."""
    config = operator_config(db_url, kube_server, encryption_key_file=encryption_key_file, resync_interval=300.0)
    running = OperatorThread(kube_server, config).start()
    try:
        yield running
    finally:
        running.stop()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def source_secret(name: str, values: dict[str, str], namespace: str = "default", labelled: bool = True) -> dict:
    labels = {"stackyard.dev/stack-secret": "true"} if labelled else {"team": "a"}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "data": {key: b64(value) for key, value in values.items()}}


def everything_stored(conn: psycopg.Connection) -> str:
    """Every row of every table of the database as text: what `pg_dump --data-only` would reveal."""
    tables = conn.execute("SELECT schemaname, tablename FROM pg_tables"
                          " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall()
    dump = []
    for schema, table in tables:
        rows = conn.execute(sql.SQL("SELECT t::text FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(table)))
        dump.extend(row[0] for row in rows)
    return "\n".join(dump)


def traces(value: str) -> list[str]:
    """The forms a secret value could leak in: as it is, and as Kubernetes carries it (base64)."""
    return [value, b64(value)]


async def test_a_referenced_secret_reaches_the_agent_and_nothing_else_shows_it(
        operator, operator_api, cluster, target, tmp_path, db, caplog, encryption_key_file):
    caplog.set_level(logging.DEBUG)  # the operator's and the API's log at every level
    password = f"pw-{random.token_hex(12)}"
    binary = base64.b64encode(bytes(range(1, 256))).decode()
    target_server, target_view = target
    await cluster.create(SECRETS, {**source_secret("db-creds", {"password": password, "username": "app"}),
                                   "data": {"password": b64(password), "username": b64("app"), "blob": binary}})
    pak_file = await setup_loop(cluster, [configmap("a")], tmp_path, secretRefs=[
        {"name": "db-creds", "targetNamespace": "apps", "targetName": "db"}])
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        applied = await wait_applied(cluster, "web")
        shipped = await target_view.client.get("/api/v1/namespaces/apps/secrets/db")
        assert shipped["type"] == "kubernetes.io/basic-auth"
        assert shipped["data"] == {"password": b64(password), "username": b64("app"), "blob": binary}, "byte for byte"

        # at rest: sealed under the key, with a keyed checksum (not the sha256 a password could be guessed from)
        row = db.execute("SELECT yaml_content, yaml_checksum, key_id FROM deployment_objects"
                         " WHERE id = %s", (applied["status"]["deploymentObject"]["id"],)).fetchone()
        keyring = Keyring.from_file(encryption_key_file)
        assert row[2] == keyring.current_id and sealed_key_ids(row[0]) == {keyring.current_id}
        plain = open_content(keyring, row[0])
        assert b64(password) in plain
        assert row[1] != sha256_hex(plain) and row[1] == keyring.mac(plain)
        assert applied["status"]["deploymentObject"]["checksum"] == row[1]

        # the source changes: a new version reaches the agent within seconds
        sequence = applied["status"]["deploymentObject"]["sequenceId"]
        rotated = f"pw-{random.token_hex(12)}"
        await cluster.patch(SECRETS, "db-creds", {"data": {"password": b64(rotated)}})

        async def new_password_applied():
            secret = await target_view.client.get("/api/v1/namespaces/apps/secrets/db")
            return secret["data"]["password"] == b64(rotated)

        await eventually(new_password_applied, timeout=PROMPT)
        changed = await wait_applied(cluster, "web")
        assert changed["status"]["deploymentObject"]["sequenceId"] > sequence

        # shown nowhere: not in any table, any custom resource, Event, log record or metric
        stored = everything_stored(db)
        kube_objects = json.dumps([await cluster.get(STACKS, "web"), await cluster.get(AGENTS, "edge"),
                                   await kube_events(cluster), await kube_events(cluster, "apps")])
        logged = "\n".join(record.getMessage() for record in caplog.records)
        metrics = (generate_latest(operator.metrics.registry) + generate_latest(operator_api.metrics.registry)).decode()
        for value in (password, rotated, binary):
            for trace in traces(value):
                assert trace not in stored, "the database holds a secret value"
                assert trace not in kube_objects, "a custom resource or an Event shows a secret value"
                assert trace not in logged, "the log shows a secret value"
                assert trace not in metrics
        assert any(record.levelno == logging.DEBUG for record in caplog.records), "the log was captured at DEBUG"
    finally:
        await agent.stop()


async def test_a_secret_that_goes_stalls_the_stack_and_what_was_shipped_stays(operator, operator_api, cluster, target,
                                                                              tmp_path):
    target_server, target_view = target
    await cluster.create(SECRETS, source_secret("db-creds", {"password": "one"}))
    pak_file = await setup_loop(cluster, [configmap("a")], tmp_path, secretRefs=[
        {"name": "db-creds", "targetNamespace": "apps"}])
    agent = await start_agent(operator_api.url, pak_file, target_server)
    try:
        applied = await wait_applied(cluster, "web")
        await cluster.delete(SECRETS, "db-creds")
        stalled = await cluster.wait_condition(STACKS, "web", "Stalled", "True", reason="SecretNotFound",
                                               timeout=PROMPT)
        assert "Secret default/db-creds" in condition(stalled, "Stalled")["message"]
        assert stalled["status"]["deploymentObject"]["sequenceId"] == applied["status"]["deploymentObject"]["sequenceId"]
        assert (await target_view.client.get("/api/v1/namespaces/apps/secrets/db-creds"))["data"] == {"password": b64("one")}

        # the Stack stops referencing it: the next version no longer holds it, and the agent prunes it
        await cluster.patch(STACKS, "web", {"spec": {"secretRefs": None}})
        await wait_applied(cluster, "web")

        async def pruned():
            return await target_view.client.get_or_none("/api/v1/namespaces/apps/secrets/db-creds") is None

        await eventually(pruned)
    finally:
        await agent.stop()


async def test_only_labelled_secrets_of_the_stacks_own_namespace_can_be_referenced(operator, cluster):
    await cluster.create(SECRETS, source_secret("db-creds", {"password": "team-a"}))
    await cluster.create(SECRETS, source_secret("plain", {"password": "x"}, labelled=False))

    # another namespace: a reference names no namespace (the schema prunes one), so it is looked up in team-b
    await cluster.create(STACKS, stack("thief", [], secretRefs=[
        {"name": "db-creds", "namespace": "default", "targetNamespace": "apps"}]) | {
        "metadata": {"name": "thief", "namespace": "team-b"}})
    thief = await cluster.wait_condition(STACKS, "thief", "Stalled", "True", reason="SecretNotFound",
                                         namespace="team-b")
    assert "Secret team-b/db-creds" in condition(thief, "Stalled")["message"]
    assert "namespace" not in thief["spec"]["secretRefs"][0]
    assert "deploymentObject" not in thief["status"]

    # an unlabelled Secret: named, with what to do; labelling it ships it within seconds
    await cluster.create(STACKS, stack("web", [], secretRefs=[{"name": "plain", "targetNamespace": "apps"}]))
    unlabelled = await cluster.wait_condition(STACKS, "web", "Stalled", "True", reason="SecretNotLabelled")
    assert "stackyard.dev/stack-secret=true" in condition(unlabelled, "Stalled")["message"]
    await cluster.patch(SECRETS, "plain", {"metadata": {"labels": {"stackyard.dev/stack-secret": "true"}}})
    await cluster.wait_condition(STACKS, "web", "Ready", "True", timeout=PROMPT)


async def test_inline_secret_data_works_with_one_warning(kube_server, db_url, cluster, db, encryption_key_file):
    config = operator_config(db_url, kube_server, encryption_key_file=encryption_key_file, resync_interval=1.0)
    operator = OperatorThread(kube_server, config).start()
    try:
        await _inline_secret_data_works_with_one_warning(operator, cluster, db, encryption_key_file)
    finally:
        operator.stop()


async def _inline_secret_data_works_with_one_warning(operator, cluster, db, encryption_key_file):
    inline = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "inline", "namespace": "apps"},
              "stringData": {"token": "inline-token-value"}}
    await cluster.create(STACKS, stack("web", [inline, configmap("a")]))
    ready = await cluster.wait_condition(STACKS, "web", "Ready", "True", reason="InlineSecretData")
    assert "spec.secretRefs" in condition(ready, "Ready")["message"]
    content = db.execute("SELECT yaml_content FROM deployment_objects").fetchone()[0]
    assert "inline-token-value" not in content
    assert "inline-token-value" in open_content(Keyring.from_file(encryption_key_file), content)

    async def warned():
        return about(await kube_events(cluster), "web", "InlineSecretData")

    warnings = await eventually(warned)
    assert [w["type"] for w in warnings] == ["Warning"]
    resync = operator.config.resync_interval
    await asyncio.sleep(3 * resync)  # the steady state over three resync periods: no second warning, no new version
    assert len(await warned()) == 1
    assert db.execute("SELECT count(*) FROM deployment_objects").fetchone()[0] == 1


async def test_the_operator_without_the_sealing_key_stalls_instead_of_guessing(store, tmp_path):
    first, other = tmp_path / "first.key", tmp_path / "other.key"
    generate_key_file(first)
    generate_key_file(other)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"},
              "data": {"k": b64("value")}}
    body = stack("web", [secret]) | {"metadata": {"name": "web", "namespace": "default", "uid": str(uuid.uuid4())}}

    async def no_secrets(namespace: str, name: str) -> None:
        return None

    result, created = await reconcile_stack(store, body, "2026-12-02T00:00:00Z", no_secrets, Keyring.from_file(first))
    assert created and result.outcome.reason == "InlineSecretData"
    for keyring, reason in ((Keyring.from_file(other), "EncryptionKeyMissing"), (None, "NoEncryptionKey")):
        try:
            await reconcile_stack(store, body, "2026-12-02T00:00:00Z", no_secrets, keyring)
        except InvalidSpec as exc:
            assert exc.reason == reason and "value" not in exc.message
        else:
            raise AssertionError(f"expected {reason}")


async def _state(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, dict]:
    async with http.get(f"{url}/api/v1/agents/self/target-state", headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json()


async def test_rotation_under_load_leaves_every_row_readable_under_the_new_key(db_url, store, tmp_path, db):
    old_file, new_file, both_file = tmp_path / "old.key", tmp_path / "new.key", tmp_path / "both.key"
    generate_key_file(old_file)
    generate_key_file(new_file)
    old, new = Keyring.from_file(old_file), Keyring.from_file(new_file)
    both_file.write_text(new_file.read_text() + old_file.read_text())  # step 1: the new key first, the old kept
    _, token = await make_agent(store, "edge")
    values: dict[uuid.UUID, list[str]] = {}  # every value each stack had, the latest last

    async def emit(stack_id: uuid.UUID, keyring: Keyring) -> None:
        values.setdefault(stack_id, []).append(f"pw-{random.token_hex(8)}")
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"},
                  "data": {"password": b64(values[stack_id][-1])}}
        latest = await store.latest_deployment_object(stack_id)
        await store.emit_deployment_object(stack_id, sealed(keyring, render_stack({"resources": [secret]})[0], latest))

    for number in range(40):
        stack_id = uuid.uuid4()
        await store.upsert_stack(stack_id, f"default/s{number}", None)
        await store.set_agent_targets(uuid.uuid4(), stack_id, [("edge", "eu-1")])
        await emit(stack_id, old)

    async with running_api(db_url, encryption_key_file=str(both_file)) as api, aiohttp.ClientSession() as http:
        done = asyncio.Event()
        answers: list[int] = []

        async def agent_reads() -> None:  # an agent keeps reading its state: every answer holds every value
            while not done.is_set():
                status, document = await _state(http, api.url, token)
                answers.append(status)
                assert status == 200, document
                assert len(document["stacks"]) == 40
                assert all(any(b64(value) in s["deploymentObject"]["yaml"] for value in values[uuid.UUID(s["stackId"])])
                           for s in document["stacks"])

        async def operator_writes() -> None:  # the operator (its key file updated) emits new versions meanwhile
            stacks = list(values)
            for stack_id in stacks[::4]:
                await emit(stack_id, Keyring.from_file(both_file))
                await asyncio.sleep(0.01)

        reader = asyncio.create_task(agent_reads())
        writer = asyncio.create_task(operator_writes())
        rotated = await asyncio.to_thread(
            stackyard, "db", "rotate-key", "--database-url", db_url, "--encryption-key-file", str(old_file),
            "--new-key-file", str(new_file), "--batch-size", "7")
        await writer
        done.set()
        await reader
        assert rotated.returncode == 0, rotated.stderr
        assert "re-sealed 7 of" in rotated.stderr and "older keys may leave the key file" in rotated.stderr
        assert len(answers) >= 3 and set(answers) == {200}

    assert await store.key_ids_in_use() == {new.current_id: 40 + 10}
    rows = db.execute("SELECT yaml_content, yaml_checksum, key_id FROM deployment_objects").fetchall()
    for content, checksum, key in rows:
        plain = open_content(new, content)  # the old key is no longer needed
        assert key == new.current_id and checksum == new.mac(plain)

    # step 3: the old key leaves the file; the API serves everything with the new key alone
    async with running_api(db_url, encryption_key_file=str(new_file)) as api, aiohttp.ClientSession() as http:
        status, document = await _state(http, api.url, token)
        assert status == 200 and len(document["stacks"]) == 40
        assert all(b64(values[uuid.UUID(s["stackId"])][-1]) in s["deploymentObject"]["yaml"] for s in document["stacks"])


async def test_an_api_without_the_key_refuses_clearly_and_serves_nothing(db_url, store, tmp_path):
    sealing, wrong = tmp_path / "sealing.key", tmp_path / "wrong.key"
    generate_key_file(sealing)
    generate_key_file(wrong)
    _, token = await make_agent(store, "edge")
    stack_id = uuid.uuid4()
    await store.upsert_stack(stack_id, "default/web", None)
    await store.set_agent_targets(uuid.uuid4(), stack_id, [("edge", "eu-1")])
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "apps"},
              "data": {"password": b64("hidden-value")}}
    keyring = Keyring.from_file(sealing)
    await store.emit_deployment_object(stack_id, sealed(keyring, render_stack({"resources": [secret]})[0], None))

    for key_file in (str(wrong), None):
        async with running_api(db_url, encryption_key_file=key_file) as api, aiohttp.ClientSession() as http:
            status, body = await _state(http, api.url, token)
            assert status == 503 and body["code"] == "missing_key", body
            assert "hidden-value" not in json.dumps(body) and b64("hidden-value") not in json.dumps(body)
            if key_file:
                assert keyring.current_id in body["message"] and "add that key" in body["message"]


def test_rotate_key_names_a_bad_key_file(db_url, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("# comment\nnot-base64!\n")
    refused = stackyard("db", "rotate-key", "--database-url", db_url, "--new-key-file", str(bad))
    assert refused.returncode == 1 and f"{bad}, line 2: not base64" in refused.stderr, refused.stderr


def test_the_embedded_database_gets_a_key_beside_its_data(tmp_path: Path, monkeypatch):
    from stackyard.cli import build_parser, encryption_key_file

    monkeypatch.delenv("STACKYARD_ENCRYPTION_KEY_FILE", raising=False)
    monkeypatch.delenv("STACKYARD_DATABASE_URL", raising=False)
    args = build_parser().parse_args(["run", "--data-dir", str(tmp_path / "data")])
    path = encryption_key_file(args)
    assert path == str(tmp_path / "data" / "encryption.key")
    assert (Path(path).stat().st_mode & 0o777) == 0o600
    first = Keyring.from_file(path).current_id
    assert encryption_key_file(args) == path and Keyring.from_file(path).current_id == first, "kept across starts"
    external = build_parser().parse_args(["run", "--database-url", "postgresql://elsewhere/db"])
    assert encryption_key_file(external) is None
