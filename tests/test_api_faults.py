"""The agent API on a real network: a silent LISTEN connection, a hung or partitioned database, a restart.

Faults are injected for real: a TCP proxy the test owns that goes silent
without a reset (tests/netfault.py), SIGSTOP of a PostgreSQL server the test
owns, and a restart of it. Everything else is real: PostgreSQL, HTTP on
127.0.0.1, the API as `stackyard api` wires it.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from stackyard import pak

from .api_harness import make_agent, make_stack, running_api
from .netfault import blackhole_proxy, frozen
from .test_api import call
from .test_database_restart import own_postgres  # noqa: F401  (a fixture)

STATE = "/api/v1/agents/self/target-state"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def until(check, timeout: float, interval: float = 0.1):
    """Poll `check` until it returns something truthy; the elapsed seconds, or AssertionError at the deadline."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(interval)


def pool_requests(api) -> int:
    return api.store.pool.get_stats().get("requests_num", 0)


async def test_a_silent_listener_stops_the_cache_and_a_rotated_key_is_refused_within_5s(db_url, http):
    with blackhole_proxy(db_url) as proxy:
        async with running_api(db_url, listen_url=proxy.url(db_url)) as api:
            agent_id, token = await make_agent(api.store, "edge")
            stack_id, _ = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
            url = api.url + STATE
            status, _, headers = await call(http, "GET", url, token)
            etag = headers["ETag"]
            before = pool_requests(api)
            for _ in range(5):
                assert (await call(http, "GET", url, token, headers={"If-None-Match": etag}))[0] == 304
            assert pool_requests(api) == before, "while the listener is alive, 304s come from the cache"

            proxy.silence()  # the listener's connection stops delivering, without an error
            rotated = pak.generate()
            await api.store.set_agent_pak_hash(agent_id, rotated.secret_hash, rotated.key_id)
            await api.store.emit_deployment_object(stack_id, "a: 2\n")

            async def old_key_refused():
                return (await call(http, "GET", url, token, headers={"If-None-Match": etag}))[0] == 401

            elapsed = await until(old_key_refused, timeout=5.0, interval=0.25)
            assert elapsed < 5.0
            status, _, changed = await call(http, "GET", url, rotated.token, headers={"If-None-Match": etag})
            assert status == 200 and changed["ETag"] != etag, "the new version is served, not a stale 304"
            assert api.metrics.registry.get_sample_value("stackyard_api_listener_up") == 0

            proxy.heal()
            new_etag = changed["ETag"]

            async def cached_again():
                start = pool_requests(api)
                ok = (await call(http, "GET", url, rotated.token, headers={"If-None-Match": new_etag}))[0] == 304
                return ok and pool_requests(api) == start and api.waiters.cache.enabled

            await until(cached_again, timeout=15.0, interval=0.25)


async def test_a_long_poll_gets_a_change_while_its_listener_is_silent(db_url, http):
    with blackhole_proxy(db_url) as proxy:
        async with running_api(db_url, listen_url=proxy.url(db_url)) as api:
            _, token = await make_agent(api.store, "edge")
            stack_id, _ = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
            _, _, headers = await call(http, "GET", api.url + STATE, token)
            proxy.silence()
            waiting = asyncio.create_task(call(http, "GET", api.url + STATE + "?wait=30", token,
                                               headers={"If-None-Match": headers["ETag"]}))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await api.store.emit_deployment_object(stack_id, "a: 2\n")
            status, body, _ = await asyncio.wait_for(waiting, 15)
            assert status == 200 and body["stacks"][0]["deploymentObject"]["sequenceId"] >= 2
            assert time.monotonic() - started < 10, "re-read on a timer while no notification can wake it"
            proxy.heal()


def routes(agent_id, do) -> list[tuple[str, str, object]]:
    return [
        ("GET", "/api/v1/agents/self", None), ("GET", f"/api/v1/agents/{agent_id}", None),
        ("GET", f"/api/v1/agents/{agent_id}/target-state", None),
        ("POST", "/api/v1/agents/self/events",
         {"events": [{"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}]}),
        ("GET", "/readyz", None),
    ]


async def assert_503_promptly(http, api, token, checks, rounds: int = 3) -> None:
    for _round in range(rounds):
        for method, path, body in checks:
            started = time.monotonic()
            status, answer, headers = await call(http, method, api.url + path, token, json=body)
            elapsed = time.monotonic() - started
            assert status == 503 and answer["code"] == "unavailable", (path, status, answer)
            assert int(headers["Retry-After"]) > 0
            assert elapsed < 1.5, f"{path} took {elapsed:.2f}s to answer 503 (deadline 1 s)"


async def test_a_hung_database_answers_503_within_the_deadline_and_recovers(own_postgres, http):  # noqa: F811
    url = own_postgres.url("stackyard")
    async with running_api(url) as api:
        agent_id, token = await make_agent(api.store, "edge")
        _, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
        checks = routes(agent_id, do)
        for method, path, body in checks:
            assert (await call(http, method, api.url + path, token, json=body))[0] == 200, path
        with frozen(own_postgres.running_info().pid):
            await assert_503_promptly(http, api, token, checks)

        async def recovered():
            return all([(await call(http, m, api.url + p, token, json=b))[0] == 200 for m, p, b in checks])

        assert await until(recovered, timeout=15.0, interval=0.2) < 15


async def test_a_partitioned_database_answers_503_and_recovers_when_the_network_heals(db_url, http):
    with blackhole_proxy(db_url) as proxy:
        async with running_api(proxy.url(db_url)) as api:
            agent_id, token = await make_agent(api.store, "edge")
            _, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
            checks = routes(agent_id, do)
            for method, path, body in checks:
                assert (await call(http, method, api.url + path, token, json=body))[0] == 200, path
            proxy.silence()
            await assert_503_promptly(http, api, token, checks, rounds=4)
            proxy.heal()
            healed = time.monotonic()

            async def recovered():
                return all([(await call(http, m, api.url + p, token, json=b))[0] == 200 for m, p, b in checks])

            await until(recovered, timeout=20.0, interval=0.25)
            assert time.monotonic() - healed < 20, "no restart needed: stuck connections were discarded"


async def test_after_a_restart_the_first_requests_succeed(own_postgres, http):  # noqa: F811
    url = own_postgres.url("stackyard")
    async with running_api(url, pool_size=5) as api:
        agent_id, token = await make_agent(api.store, "edge")
        for _ in range(10):  # fill the pool with connections that the restart will break
            await asyncio.gather(*[call(http, "GET", f"{api.url}/api/v1/agents/{agent_id}", token) for _ in range(5)])
        own_postgres.stop(mode="fast")
        own_postgres.start()
        statuses = [(await call(http, "GET", f"{api.url}/api/v1/agents/{agent_id}", token))[0] for _ in range(10)]
        assert statuses == [200] * 10, "broken pooled connections are checked and replaced, not served as 503"
