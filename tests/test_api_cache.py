"""The agent API answers a 304 from its cache, with no database round trip, and the cache stays true: a new
version, a removed target, a rotated key or a deleted agent take effect through LISTEN/NOTIFY, in every API
process. Real PostgreSQL, real HTTP; a database round trip is counted as a connection taken from the pool."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiohttp
import pytest

from stackyard import pak

from .api_harness import make_agent, make_stack, running_api
from .operator_harness import eventually

STATE = "/api/v1/agents/self/target-state"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def get_state(http, api, token: str, etag: str | None = None) -> tuple[int, str, dict | None]:
    headers = {"Authorization": f"Bearer {token}", **({"If-None-Match": etag} if etag else {})}
    async with http.get(api.url + STATE, headers=headers) as response:
        body = await response.json() if response.status == 200 else None
        return response.status, response.headers.get("ETag", ""), body


def pool_requests(api) -> int:
    return api.store.pool.get_stats().get("requests_num", 0)


async def test_a_304_touches_no_database_and_changes_still_arrive(db_url, http):
    async with running_api(db_url) as api:
        _, token = await make_agent(api.store, "edge")
        stack_id, _ = await make_stack(api.store, "ns/web")
        owner = uuid.uuid4()
        await api.store.set_agent_targets(owner, stack_id, [("edge", "eu-1")], "ns")
        status, etag, _ = await get_state(http, api, token)
        assert status == 200
        assert (await get_state(http, api, token, etag))[0] == 304  # fills the cache

        before = pool_requests(api)
        for _ in range(20):
            assert (await get_state(http, api, token, etag))[0] == 304
        assert pool_requests(api) == before, "a 304 takes no database connection"

        await api.store.emit_deployment_object(stack_id, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")

        async def changed():
            status, new_etag, body = await get_state(http, api, token, etag)
            return (new_etag, body) if status == 200 else None

        etag, body = await eventually(changed)
        assert body["stacks"][0]["deploymentObject"]["sequenceId"] > 1

        assert (await get_state(http, api, token, etag))[0] == 304
        await api.store.remove_agent_targets(owner)  # the deleted row names the agent whose state changed

        async def untargeted():
            status, _, body = await get_state(http, api, token, etag)
            return status == 200 and body["stacks"] == []

        await eventually(untargeted)


async def test_a_rotated_key_and_a_deleted_agent_are_refused_by_every_api_process(db_url, http):
    async with contextlib.AsyncExitStack() as stack:
        apis = [await stack.enter_async_context(running_api(db_url)) for _ in range(2)]
        agent_id, token = await make_agent(apis[0].store, "edge")
        for api in apis:
            assert (await get_state(http, api, token))[0] == 200
            assert (await get_state(http, api, token))[0] == 200  # served from the cache now
        assert all(api.waiters.cache.identities for api in apis)

        new = pak.generate()
        await apis[0].store.set_agent_pak_hash(agent_id, new.secret_hash, new.key_id)
        for api in apis:
            await eventually(lambda api=api: _status_is(http, api, token, 401), timeout=2)
            assert (await get_state(http, api, new.token))[0] == 200

        await apis[0].store.soft_delete_agent(agent_id)
        for api in apis:
            await eventually(lambda api=api: _status_is(http, api, new.token, 401), timeout=2)


async def _status_is(http, api, token: str, expected: int) -> bool:
    return (await get_state(http, api, token))[0] == expected


async def test_agents_woken_together_wait_their_turn_instead_of_503(db_url, http):
    """100 long-polls woken by one change through a 2-connection pool with a 10 ms wait: all get the new state."""
    async with running_api(db_url, pool_size=2, database_timeout=0.01) as api:
        stack_id, _ = await make_stack(api.store, "ns/web")
        agents = [await make_agent(api.store, f"edge-{i}") for i in range(100)]
        for i in range(100):
            await api.store.set_agent_targets(uuid.uuid4(), stack_id, [(f"edge-{i}", "eu-1")], "ns")
        etags = [(await get_state(http, api, token))[1] for _, token in agents]

        async def poll(token: str, etag: str) -> int:
            headers = {"Authorization": f"Bearer {token}", "If-None-Match": etag}
            async with http.get(api.url + STATE, params={"wait": "20"}, headers=headers) as response:
                await response.read()
                return response.status

        polls = [asyncio.create_task(poll(token, etag)) for (_, token), etag in zip(agents, etags)]
        await eventually(lambda: _waiting(api, 100))
        await api.store.emit_deployment_object(stack_id, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
        assert await asyncio.gather(*polls) == [200] * 100


async def _waiting(api, count: int) -> bool:
    return sum(len(v) for v in api.waiters._waiting.values()) >= count
