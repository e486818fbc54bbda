"""The agent API over real HTTP and a real PostgreSQL: auth, isolation, bad input, ETags, long-poll, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from stackyard import pak

from .operator_harness import eventually
from .api_harness import make_agent, make_stack, running_api


@pytest.fixture
async def api(db_url):
    async with running_api(db_url) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http, method, url, token=None, **kwargs):
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, headers=headers, **kwargs) as response:
        text = await response.text()
        body = json.loads(text) if text and response.content_type == "application/json" else text
        return response.status, body, response.headers


async def test_authentication_failures_are_401_with_json(api, http):
    agent_id, token = await make_agent(api.store, "edge")
    url = f"{api.url}/api/v1/agents/self"
    unknown = pak.generate().token
    malformed = ["", "Bearer", "Bearer not-a-key", "Basic dXNlcjpwYXNz", f"Bearer {token[:-1]}!", "Bearer sy_short_x"]
    for header in malformed:
        status, body, headers = await call(http, "GET", url, headers={"Authorization": header} if header else {})
        assert status == 401 and set(body) == {"code", "message"}, header
        assert headers["WWW-Authenticate"] == "Bearer"
    assert (await call(http, "GET", url, unknown))[0] == 401
    status, body, _ = await call(http, "GET", url, token)
    assert status == 200
    assert body["id"] == str(agent_id) and body["clusterName"] == "eu-1"
    assert body["labels"] == ["role=edge"] and body["annotations"] == {"team": "infra"}

    rotated = pak.generate()
    await api.store.set_agent_pak_hash(agent_id, rotated.secret_hash, rotated.key_id)

    async def refused():  # the cached identity goes when the NOTIFY of the rotation arrives (milliseconds)
        status, body, _ = await call(http, "GET", url, token)
        return status == 401 and body["code"] == "unauthenticated"

    await eventually(refused, timeout=1.0, interval=0.01)
    assert (await call(http, "GET", url, rotated.token))[0] == 200


async def test_an_agent_sees_and_writes_only_its_own_data(api, http, db):
    a_id, a_token = await make_agent(api.store, "a")
    b_id, _ = await make_agent(api.store, "b")
    _, a_do = await make_stack(api.store, "ns/a-stack", targets=[("a", "eu-1")])
    _, b_do = await make_stack(api.store, "ns/b-stack", targets=[("b", "eu-1")])

    assert (await call(http, "GET", f"{api.url}/api/v1/agents/{b_id}", a_token))[0] == 403
    assert (await call(http, "GET", f"{api.url}/api/v1/agents/{b_id}/target-state", a_token))[0] == 403
    assert (await call(http, "GET", f"{api.url}/api/v1/agents/{a_id}", a_token))[0] == 200
    status, state, _ = await call(http, "GET", f"{api.url}/api/v1/agents/self/target-state", a_token)
    assert status == 200 and [s["stackName"] for s in state["stacks"]] == ["ns/a-stack"]

    before = db.execute("SELECT count(*) FROM agent_events").fetchone()[0]
    batch = {"events": [
        {"deploymentObjectId": str(a_do), "eventType": "APPLY", "status": "SUCCESS", "message": "ok"},
        {"deploymentObjectId": str(b_do), "eventType": "APPLY", "status": "SUCCESS", "message": "sneaky"},
    ]}
    status, body, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/events", a_token, json=batch)
    assert status == 404 and body["code"] == "not_targeted"
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == before, "a refused batch writes nothing"

    status, body, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/events", a_token,
                                 json={"events": batch["events"][:1]})
    assert status == 200 and body["accepted"] == 1


async def test_bad_bodies_get_4xx_never_500(api, http, db):
    _, token = await make_agent(api.store, "edge")
    _, do = await make_stack(api.store, "ns/s", targets=[("edge", "eu-1")])
    events = f"{api.url}/api/v1/agents/self/events"
    good_event = {"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}
    bodies = [
        (b"", 400), (b"{", 400), (b"[]", 400), (b"null", 400), (b'"text"', 400), (b"\xff\xfe", 400),
        (json.dumps({"events": []}).encode(), 400),
        (json.dumps({"events": [{**good_event, "status": "MAYBE"}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "deploymentObjectId": "1; DROP TABLE stacks"}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "eventType": "x" * 60}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "message": "m" * 5000}]}).encode(), 400),
        (json.dumps({"events": [good_event] * 101}).encode(), 400),
        (json.dumps({"events": [good_event], "extra": 1}).encode(), 400),
        (json.dumps({"events": [{**good_event, "details": {"health": "Fine"}}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "details": {"health": "Healthy", "extra": 1}}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "details": {"unhealthy": [{"object": "o", "status": "Failed"}] * 6}}]}
                    ).encode(), 400),
        (json.dumps({"events": [{**good_event, "details": {"counts": {"Broken": 1}}}]}).encode(), 400),
        (json.dumps({"events": [{**good_event, "deploymentObjectId": "00000000-0000-0000-0000-000000000000"}]}).encode(), 404),
        (b"x" * (2 * 1024 * 1024), 413),
    ]
    for raw, expected in bodies:
        status, body, _ = await call(http, "POST", events, token, data=raw, headers={"Content-Type": "application/json"})
        assert status == expected, (raw[:60], status, body)
        assert set(body) == {"code", "message"}
    status, body, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/heartbeat", token, json={"status": 7})
    assert status == 400 and "status" in body["message"]
    for wait in ("-1", "abc", "61", "1e3"):
        status, body, _ = await call(http, "GET", f"{api.url}/api/v1/agents/self/target-state?wait={wait}", token)
        assert status == 400 and body["code"] == "invalid_wait"
    assert (await call(http, "GET", f"{api.url}/api/v1/agents/not-a-uuid", token))[0] == 400
    status, body, _ = await call(http, "GET", f"{api.url}/api/v1/nowhere", token)
    assert status == 404 and body["code"] == "not_found"
    status, body, _ = await call(http, "DELETE", f"{api.url}/api/v1/agents/self", token)
    assert status == 405 and body["code"] == "method_not_allowed"
    assert db.execute("SELECT count(*) FROM stacks").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 0


async def test_heartbeat_records_time(api, http, db):
    agent_id, token = await make_agent(api.store, "edge")
    status, body, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/heartbeat", token)
    assert status == 200 and body["lastHeartbeat"]
    row = db.execute("SELECT last_heartbeat IS NOT NULL, status FROM agents WHERE id = %s", (agent_id,)).fetchone()
    assert row == (True, "ACTIVE")


async def test_target_state_etag_304_and_deletion_markers(api, http):
    _, token = await make_agent(api.store, "edge")
    stack_id, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    url = f"{api.url}/api/v1/agents/self/target-state"
    status, state, headers = await call(http, "GET", url, token)
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"')
    entry = state["stacks"][0]
    assert entry["deploymentObject"] == {"id": str(do), "sequenceId": entry["deploymentObject"]["sequenceId"],
                                         "checksum": entry["deploymentObject"]["checksum"], "isDeletionMarker": False,
                                         "yaml": "a: 1\n"}
    status, _, headers = await call(http, "GET", url, token, headers={"If-None-Match": etag})
    assert status == 304 and headers["ETag"] == etag

    await api.store.soft_delete_stack(stack_id)

    async def changed():  # the API's cached ETag is dropped by the change's NOTIFY, milliseconds after the commit
        answer = await call(http, "GET", url, token, headers={"If-None-Match": etag})
        return answer if answer[0] == 200 else None

    status, state, headers = await eventually(changed, timeout=2)
    assert status == 200 and headers["ETag"] != etag
    assert state["stacks"][0]["deleted"] is True
    assert state["stacks"][0]["deploymentObject"]["isDeletionMarker"] is True


async def test_long_poll_wakes_on_change_and_times_out_with_304(api, http):
    _, token = await make_agent(api.store, "edge")
    stack_id, _ = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    url = f"{api.url}/api/v1/agents/self/target-state"
    _, _, headers = await call(http, "GET", url, token)
    etag = headers["ETag"]

    started = time.monotonic()
    status, _, _ = await call(http, "GET", url + "?wait=1", token, headers={"If-None-Match": etag})
    assert status == 304 and time.monotonic() - started >= 0.9

    async def change_soon():
        await asyncio.sleep(0.3)
        await api.store.emit_deployment_object(stack_id, "a: 2\n")

    started = time.monotonic()
    changer = asyncio.create_task(change_soon())
    status, state, _ = await call(http, "GET", url + "?wait=30", token, headers={"If-None-Match": etag})
    elapsed = time.monotonic() - started
    await changer
    assert status == 200 and state["stacks"][0]["deploymentObject"]["yaml"] == "a: 2\n"
    assert elapsed < 5, "woken by NOTIFY, not by the 30 s timeout"


async def test_openapi_document_matches_the_routes(api, http):
    status, doc, _ = await call(http, "GET", f"{api.url}/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    from stackyard.api import create_app

    app = create_app(api.store, api.metrics, api.waiters)
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical.replace("{agent_id}", "{agentId}")
        served.add((path, route.method.lower()))
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented


async def test_health_readiness_and_metrics(api, http):
    assert (await call(http, "GET", f"{api.url}/healthz"))[0] == 200
    assert (await call(http, "GET", f"{api.url}/readyz"))[0] == 200
    await call(http, "GET", f"{api.url}/api/v1/agents/self")
    status, text, _ = await call(http, "GET", f"{api.url}/metrics")
    assert status == 200
    assert 'stackyard_api_requests_total{code="401",method="GET",route="/api/v1/agents/self"}' in text
    assert "stackyard_db_pool_connections" in text


async def test_health_details_are_stored_with_the_event(api, http, db):
    _, token = await make_agent(api.store, "edge")
    _, do = await make_stack(api.store, "ns/s", targets=[("edge", "eu-1")])
    details = {"health": "Degraded", "counts": {"Current": 2, "Failed": 1},
               "unhealthy": [{"object": "apps/v1/Deployment apps/web", "status": "Failed",
                              "message": "Progress deadline exceeded"}]}
    status, _, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/events", token, json={"events": [
        {"deploymentObjectId": str(do), "eventType": "HEALTH", "status": "FAILURE", "message": "Degraded",
         "details": details}]})
    assert status == 200
    assert db.execute("SELECT details FROM agent_events WHERE event_type = 'HEALTH'").fetchone()[0] == details
