"""Every client of the agent API gets a limit: long-polls per key, event and heartbeat rates, failed
authentications per address, connections per process; an abandoned long-poll ends with its client.

Real HTTP on 127.0.0.1 against the API as `stackyard api` wires it, over a real PostgreSQL. Counts are
taken from the server's own state (subscriptions, pool requests, rows), not only from answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from stackyard import pak
from stackyard.api.limits import LimitSettings

from .api_harness import make_agent, make_stack, running_api
from .test_api import call
from .test_api_faults import STATE, until


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def limited(api, limit: str) -> float:
    return api.metrics.registry.get_sample_value("stackyard_api_limited_total", {"limit": limit}) or 0.0


async def test_long_polls_per_agent_are_capped_and_others_are_not_affected(db_url, http):
    async with running_api(db_url) as api:
        _, token_a = await make_agent(api.store, "a")
        _, token_b = await make_agent(api.store, "b")
        await make_stack(api.store, "ns/web", "a: 1\n", targets=[("a", "eu-1"), ("b", "eu-1")])
        _, _, headers = await call(http, "GET", api.url + STATE, token_a)
        etag = {"If-None-Match": headers["ETag"]}
        polls = [asyncio.create_task(call(http, "GET", api.url + STATE + "?wait=20", token_a, headers=dict(etag)))
                 for _ in range(4)]
        await until(lambda: _async(api.waiters.waiting() == 4), timeout=5)
        status, body, answer_headers = await call(http, "GET", api.url + STATE + "?wait=20", token_a, headers=etag)
        assert status == 429 and body["code"] == "too_many_requests" and int(answer_headers["Retry-After"]) >= 1
        assert limited(api, "long_polls") == 1
        _, _, b_headers = await call(http, "GET", api.url + STATE, token_b)
        b_poll = asyncio.create_task(call(http, "GET", api.url + STATE + "?wait=1", token_b,
                                          headers={"If-None-Match": b_headers["ETag"]}))
        assert (await b_poll)[0] == 304, "another agent still long-polls"
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)


async def _async(value):
    return value


async def test_a_disconnect_cancels_its_long_poll(db_url):
    async with running_api(db_url, limits=LimitSettings(long_polls_per_agent=100)) as api:
        _, token = await make_agent(api.store, "a")
        stack_id, _ = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("a", "eu-1")])
        async with aiohttp.ClientSession() as session:
            _, _, headers = await call(session, "GET", api.url + STATE, token)
            etag = headers["ETag"]
        sessions = [aiohttp.ClientSession() for _ in range(50)]
        polls = [asyncio.create_task(call(s, "GET", api.url + STATE + "?wait=60", token,
                                          headers={"If-None-Match": etag})) for s in sessions]
        await until(lambda: _async(api.waiters.waiting() == 50), timeout=10)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        for session in sessions:
            await session.close()  # the clients go away
        await until(lambda: _async(api.waiters.waiting() == 0), timeout=5)
        closed = api.metrics.registry.get_sample_value(
            "stackyard_api_requests_total", {"route": STATE, "method": "GET", "code": "499"})
        assert closed == 50, "abandoned long-polls are counted as 499, not answered later"
        before = api.store.pool.get_stats().get("requests_num", 0)
        await api.store.emit_deployment_object(stack_id, "a: 2\n")
        await asyncio.sleep(0.5)
        after = api.store.pool.get_stats().get("requests_num", 0)
        assert after - before <= 3, "a change wakes no abandoned handler (each would read the state)"


async def test_heartbeats_and_events_are_rate_limited_per_agent(db_url, http, db):
    settings = LimitSettings(heartbeats_per_second=0.5, heartbeats_burst=3, events_per_second=1, events_burst=150)
    async with running_api(db_url, limits=settings) as api:
        _, token_a = await make_agent(api.store, "a")
        _, token_b = await make_agent(api.store, "b")
        _, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("a", "eu-1"), ("b", "eu-1")])
        beat = api.url + "/api/v1/agents/self/heartbeat"
        statuses = [(await call(http, "POST", beat, token_a, json={}))[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        status, body, headers = await call(http, "POST", beat, token_a, json={})
        assert status == 429 and int(headers["Retry-After"]) >= 1 and body["code"] == "too_many_requests"
        assert (await call(http, "POST", beat, token_b, json={}))[0] == 200, "the limit is per agent"

        events = api.url + "/api/v1/agents/self/events"
        batch = {"events": [{"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}] * 100}
        assert (await call(http, "POST", events, token_a, json=batch))[0] == 200
        status, _, headers = await call(http, "POST", events, token_a, json=batch)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert limited(api, "events") == 1 and limited(api, "heartbeats") == 3
        stored = db.execute("SELECT count(*) FROM agent_events e JOIN agents a ON a.id = e.agent_id"
                            " WHERE a.name = 'a'").fetchone()[0]
        # the newest 50 per deployment object stay, plus the one status shows if it is not among them
        assert 50 <= stored <= 51, "events beyond the count kept per deployment object are deleted as they arrive"


async def test_unknown_keys_cost_one_lookup_and_then_a_429_per_address(db_url, http):
    async with running_api(db_url, limits=LimitSettings(auth_failures_burst=5, auth_failures_per_second=0.2)) as api:
        _, token = await make_agent(api.store, "a")
        url = api.url + "/api/v1/agents/self"
        unknown = pak.generate().token
        before = api.store.pool.get_stats().get("requests_num", 0)
        statuses = [(await call(http, "GET", url, unknown))[0] for _ in range(8)]
        lookups = api.store.pool.get_stats().get("requests_num", 0) - before
        assert statuses == [401] * 5 + [429] * 3
        assert lookups == 1, "an unknown key is remembered: the database is asked once"
        status, body, headers = await call(http, "GET", url, unknown)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        status, _, _ = await call(http, "GET", url, token)
        assert status == 429, "an exhausted address gets no lookup at all, until its bucket refills"


async def test_connections_over_the_limit_are_closed_and_logged_once(db_url, http, caplog):
    caplog.set_level(logging.WARNING, "stackyard.api.server")
    async with running_api(db_url, limits=LimitSettings(max_connections=10)) as api:
        _, token = await make_agent(api.store, "a")
        host, port = api.url.removeprefix("http://").split(":")
        held = []
        for _ in range(25):
            sock = socket.create_connection((host, int(port)))
            held.append(sock)
        await until(lambda: _async((api.metrics.registry.get_sample_value(
            "stackyard_api_connections_refused_total") or 0) >= 15), timeout=5)
        refusals = [r for r in caplog.records if "refusing connections" in r.getMessage()]
        assert len(refusals) == 1, "one line per episode, not one per connection"
        for sock in held:
            sock.close()

        async def served():
            try:
                return (await call(http, "GET", api.url + "/api/v1/agents/self", token))[0] == 200
            except aiohttp.ClientError:
                return False

        await until(served, timeout=5)
