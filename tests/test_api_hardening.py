"""The agent API against hostile and broken clients: no 500, JSON for every error, prompt 503s, exact auth.

Real HTTP on 127.0.0.1 (raw sockets where a client library would refuse to
send the malformed request) and a real PostgreSQL; the outage test stops a
PostgreSQL server of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

from stackyard import pak
from stackyard.api import schemas
from stackyard.api.validation import CANONICAL_UUID

from .api_harness import make_agent, make_stack, running_api
from .test_api import call
from .test_database_restart import own_postgres  # noqa: F401  (a fixture)


@pytest.fixture
async def api(db_url):
    async with running_api(db_url, idle_timeout=1.0, body_timeout=1.0) as running:
        yield running


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def raw(url: str, request: bytes, read_timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; (status, headers, body) of the answer, status 0 if closed silently."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), read_timeout)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return 0, {}, b""  # closed without an answer
            raise
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), read_timeout)
    finally:
        writer.close()
    return int(lines[0].split()[1]), headers, body


def _events_url(api) -> str:
    return f"{api.url}/api/v1/agents/self/events"


async def test_input_postgresql_cannot_store_is_a_400_and_writes_nothing(api, http, db):
    _, token = await make_agent(api.store, "edge")
    _, do = await make_stack(api.store, "ns/s", targets=[("edge", "eu-1")])
    good = {"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}
    bodies = [
        json.dumps({"events": [{**good, "message": "nul \x00 inside"}]}),
        '{"events": [{"deploymentObjectId": "%s", "eventType": "APPLY", "status": "SUCCESS", "message": "\\ud800"}]}' % do,
        json.dumps({"events": [{**good, "deploymentObjectId": f"{do}\n"}]}),
        json.dumps({"events": [{**good, "eventType": "APPLY\n"}]}),
        json.dumps({"events": [{**good, "message": "ok"}], "x\x00": 1}),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"events": [{**good, "message": "ok"}]})[:-1] + ', "deep": ' + "[" * 40 + "]" * 40 + "}",
    ]
    for body in bodies:
        status, answer, _ = await call(http, "POST", _events_url(api), token, data=body.encode("utf-8", "surrogatepass"),
                                       headers={"Content-Type": "application/json"})
        assert status == 400 and set(answer) == {"code", "message"}, (body[:80], status, answer)
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 0
    state = f"{api.url}/api/v1/agents/self/target-state"
    for wait in ("²", "٣", "9" * 5000, "1\n", " 1", "+1"):
        status, answer, _ = await call(http, "GET", state, token, params={"wait": wait})
        assert status == 400 and answer["code"] == "invalid_wait", (wait, status, answer)


async def test_aiohttps_own_refusals_are_json_and_405_keeps_allow(api, http):
    _, token = await make_agent(api.store, "edge")
    host = api.url.removeprefix("http://")
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/agents/self/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n{}",
    ]
    for request in requests:
        status, headers, body = await raw(api.url, request.replace(b"Host: x", f"Host: {host}".encode()))
        assert 400 <= status < 500, (request[:60], status)
        assert headers["content-type"].startswith("application/json"), (request[:60], headers)
        assert set(json.loads(body)) == {"code", "message"}
    status, answer, headers = await call(http, "DELETE", f"{api.url}/api/v1/agents/self", token)
    assert status == 405 and answer["code"] == "method_not_allowed"
    assert "GET" in headers["Allow"]


async def test_a_client_gone_mid_body_is_not_an_error(api, caplog):
    _, token = await make_agent(api.store, "edge")
    host = api.url.removeprefix("http://")
    _, port = host.split(":")
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    writer.write(f"POST /api/v1/agents/self/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"events\": [".encode())
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now reading the body
    writer.close()

    def codes() -> dict[str, float]:
        found: dict[str, float] = {}
        for metric in api.metrics.registry.collect():
            if metric.name == "stackyard_api_requests":
                for sample in metric.samples:
                    if sample.name.endswith("_total") and sample.labels["route"].endswith("/events"):
                        found[sample.labels["code"]] = sample.value
        return found

    deadline = time.monotonic() + 5
    while "499" not in codes() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert codes() == {"499": 1.0}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_the_key_id_must_match_the_key(api, http):
    agent_id, token = await make_agent(api.store, "edge")
    url = f"{api.url}/api/v1/agents/self"
    assert (await call(http, "GET", url, token))[0] == 200
    key = pak.parse(token)
    other_id = "0" * 8 if key.key_id != "0" * 8 else "1" * 8
    forged = f"sy_{other_id}_{key.secret}"
    status, answer, _ = await call(http, "GET", url, forged)
    assert status == 401 and answer["code"] == "unauthenticated"


async def test_if_none_match_follows_rfc_9110(api, http):
    _, token = await make_agent(api.store, "edge")
    await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    url = f"{api.url}/api/v1/agents/self/target-state"
    _, _, headers = await call(http, "GET", url, token)
    etag = headers["ETag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', f'W/"nope" ,W/{etag}', "*"):
        assert (await call(http, "GET", url, token, headers={"If-None-Match": header}))[0] == 304, header
    for header in ('"nope"', "garbage", etag[:-1], ""):
        assert (await call(http, "GET", url, token, headers={"If-None-Match": header}))[0] == 200, header


async def test_slow_clients_are_cut_off_but_long_polls_keep_working(api, http):
    _, token = await make_agent(api.store, "edge")
    await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    host = api.url.removeprefix("http://")
    # a header that never completes: the connection is closed after the idle timeout (1 s here)
    started = time.monotonic()
    status, _, _ = await raw(api.url, f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
    assert status == 0 and time.monotonic() - started < 4
    # a body that stalls: 408 in JSON after the body timeout (1 s here)
    started = time.monotonic()
    status, headers, body = await raw(api.url, (
        f"POST /api/v1/agents/self/heartbeat HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())
    assert status == 408 and json.loads(body)["code"] == "request_timeout"
    assert time.monotonic() - started < 4
    # a long-poll longer than the idle timeout still answers
    url = f"{api.url}/api/v1/agents/self/target-state"
    _, _, headers = await call(http, "GET", url, token)
    started = time.monotonic()
    status, _, _ = await call(http, "GET", url, token, params={"wait": "3"}, headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and time.monotonic() - started >= 2.9


def test_openapi_documents_every_status_and_the_uuid_path():
    document = schemas.openapi_document("test")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code in ("400", "405", "413", "414", "431", "503"):
                assert code in operation["responses"], (method, path, code)
            if operation.get("security"):
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
                assert "Retry-After" in operation["responses"]["429"]["headers"]
            if "{agentId}" in path:
                (param,) = operation["parameters"]
                assert param["schema"] == {"type": "string", "format": "uuid", "pattern": CANONICAL_UUID}
    assert "Allow" in document["paths"]["/healthz"]["get"]["responses"]["405"]["headers"]
    assert "Retry-After" in document["paths"]["/healthz"]["get"]["responses"]["503"]["headers"]


async def test_database_outage_answers_503_within_a_second_on_every_route(own_postgres, http):  # noqa: F811
    url = own_postgres.url("stackyard")
    async with running_api(url) as api:
        agent_id, token = await make_agent(api.store, "edge")
        _, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
        routes = [
            ("GET", "/api/v1/agents/self", None), ("GET", f"/api/v1/agents/{agent_id}", None),
            ("GET", f"/api/v1/agents/{agent_id}/target-state", None),
            ("GET", "/api/v1/agents/self/target-state?wait=30", None),
            ("POST", "/api/v1/agents/self/heartbeat", {}),
            ("POST", "/api/v1/agents/self/events",
             {"events": [{"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}]}),
            ("GET", "/readyz", None),
        ]
        for method, path, body in routes:
            assert (await call(http, method, api.url + path, token, json=body))[0] == 200, path
        own_postgres.stop(mode="immediate")
        try:
            for _round in range(3):  # for as long as PostgreSQL is down, not only the first requests
                for method, path, body in routes:
                    started = time.monotonic()
                    status, answer, headers = await call(http, method, api.url + path, token, json=body)
                    elapsed = time.monotonic() - started
                    assert status == 503 and answer["code"] == "unavailable", (path, status, answer)
                    assert int(headers["Retry-After"]) > 0
                    assert elapsed < 1.0, f"{path} took {elapsed:.2f}s to answer 503"
                await asyncio.sleep(0.5)
        finally:
            own_postgres.start()

        async def recovered():
            return all([(await call(http, m, api.url + p, token, json=b))[0] == 200 for m, p, b in routes[:3]])

        deadline = time.monotonic() + 20
        while not await recovered():
            assert time.monotonic() < deadline, "the API recovers by itself"
            await asyncio.sleep(0.2)


async def test_each_malformed_request_gets_its_own_status_in_json(api, http, caplog, db):
    agent_id, token = await make_agent(api.store, "edge")
    _, do = await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
    host = api.url.removeprefix("http://")
    # an oversized header is 431, an oversized request line 414 (not a generic 400)
    for request, expected in ((b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
                              (b"GET /healthz?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)):
        status, headers, body = await raw(api.url, request.replace(b"Host: x", f"Host: {host}".encode()))
        assert status == expected and json.loads(body)["code"] in ("headers_too_large", "uri_too_long"), status
    # a body that does not follow its Content-Encoding is the client's error: 400, and no ERROR logged
    event = json.dumps({"events": [{"deploymentObjectId": str(do), "eventType": "APPLY", "status": "SUCCESS"}]})
    status, answer, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/events", token, data=b"not deflate",
                                   headers={"Content-Encoding": "deflate", "Content-Type": "application/json"})
    assert status == 400 and answer["code"] == "invalid_encoding", (status, answer)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # a body that is not JSON by its Content-Type: 415, nothing stored
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer, _ = await call(http, "POST", f"{api.url}/api/v1/agents/self/events", token,
                                       data=event.encode(), headers=headers)
        assert status == 415 and answer["code"] == "unsupported_media_type", (content_type, status)
    assert db.execute("SELECT count(*) FROM agent_events").fetchone()[0] == 0
    # one canonical UUID form in paths
    for form in (str(agent_id).upper(), agent_id.hex, f"urn:uuid:{agent_id}"):
        status, answer, _ = await call(http, "GET", f"{api.url}/api/v1/agents/{form}", token)
        assert status == 400 and answer["code"] == "invalid_agent_id", (form, status)
    assert (await call(http, "GET", f"{api.url}/api/v1/agents/{agent_id}", token))[0] == 200
    # two Authorization headers: neither wins
    other = pak.generate().token
    for pair in ((token, other), (other, token)):
        request = (f"GET /api/v1/agents/self HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {pair[0]}\r\n"
                   f"Authorization: Bearer {pair[1]}\r\n\r\n").encode()
        status, _, body = await raw(api.url, request)
        assert status == 400 and json.loads(body)["code"] == "invalid_header", pair
