"""The agent API on a real port in the test's loop, over the test's database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from typing import Any

from stackyard import pak
from stackyard.api import ApiSettings
from stackyard.api.waiters import StateWaiters
from stackyard.metrics import Metrics
from stackyard.serve import api_serving
from stackyard.store import Store
from stackyard.store.embedded import free_port


@dataclass
class RunningApi:
    url: str
    store: Store
    metrics: Metrics
    waiters: StateWaiters


@contextlib.asynccontextmanager
async def running_api(db_url: str, pool_size: int = 10, listen_url: str | None = None,
                      **settings_overrides: Any) -> AsyncIterator[RunningApi]:
    """The API as `stackyard api` serves it (`serve.api_serving`: same pool, runner, limits and settings unless
    overridden). `listen_url` gives the listener another way to the database (through a test's proxy)."""
    settings = ApiSettings(**settings_overrides)
    metrics = Metrics()
    port = free_port()
    async with api_serving(db_url, f"127.0.0.1:{port}", metrics, pool_size, settings, listen_url) as server:
        deadline = asyncio.get_running_loop().time() + 10
        while not server.waiters.cache.enabled and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        scheme = "https" if settings.tls_cert_file else "http"
        yield RunningApi(f"{scheme}://127.0.0.1:{port}", server.store, metrics, server.waiters)


async def make_agent(store: Store, name: str, cluster: str = "eu-1") -> tuple[uuid.UUID, str]:
    """An agent row with a fresh key; returns (id, token)."""
    agent_id = uuid.uuid4()
    await store.register_agent(agent_id, name, cluster, ["role=edge"], {"team": "infra"})
    key = pak.generate()
    await store.set_agent_pak_hash(agent_id, key.secret_hash, key.key_id)
    return agent_id, key.token


async def make_stack(store: Store, name: str, content: str = "kind: ConfigMap\n", targets=()) -> tuple[uuid.UUID, uuid.UUID]:
    """A stack with one deployment object targeted to (agent, cluster) pairs; returns (stack id, do id)."""
    stack_id = uuid.uuid4()
    await store.upsert_stack(stack_id, name, None)
    do = (await store.emit_deployment_object(stack_id, content)).deployment_object
    for agent, cluster in targets:
        await store.set_agent_targets(uuid.uuid4(), stack_id, [(agent, cluster)])
    return stack_id, do.id
