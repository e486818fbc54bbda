"""The aiohttp application of the agent API (docs/architecture.md, "Agent API").

Every error is JSON `{code, message}`; no input reaches SQL except as a
parameter; a database outage answers 503; nothing answers 500 for any input.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import psycopg
import psycopg_pool
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client.aiohttp import make_aiohttp_handler

from .. import __version__, pak
from ..encryption import Keyring
from ..logs import Episodes
from ..metrics import Metrics
from ..protocol import (
    EVENTS_REQUEST,
    HEARTBEAT_REQUEST,
    Event,
    Heartbeat,
    Identity,
    WireStack,
    target_state_document,
)
from ..overlays import UndefinedVariable
from ..store import Agent, DesiredStack, EventIn, NotFound, NotTargeted, Store, Version
from . import schemas
from .limits import Limiter, LimitSettings, Refused
from .rendering import KeyUnavailable, Renderer
from .validation import InvalidInput, canonical_uuid, is_json_media_type, none_match, parse_body, parse_wait
from .waiters import StateWaiters

log = logging.getLogger(__name__)

STORE_KEY = web.AppKey("store", Store)
METRICS_KEY = web.AppKey("metrics", Metrics)
WAITERS_KEY = web.AppKey("waiters", StateWaiters)
LIMITER_KEY = web.AppKey("limiter", Limiter)
EPISODES_KEY = web.AppKey("episodes", Episodes)
AGENT_KEY = "stackyard.agent"
UNAVAILABLE = (psycopg.OperationalError, psycopg_pool.PoolTimeout)
CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
CLIENT_CLOSED = 499
UNWOKEN_RECHECK = 5.0  # seconds between reads of a long-poll's state while no notification can wake it


RENDERER_KEY = web.AppKey("renderer", Renderer)


@dataclass(frozen=True)
class ApiSettings:
    """Limits of the agent API (README, "Agent API")."""

    max_body_bytes: int = 1024 * 1024
    max_wait_seconds: int = 60
    # A request body must arrive within this time (408 otherwise).
    body_timeout: float = 10.0
    # A connection must send a complete request header within this time, and is closed when idle this long.
    idle_timeout: float = 15.0
    # A request waits at most this long for a database connection: an outage answers 503 within it.
    database_timeout: float = 0.5
    # Every database call of a request completes within this time, or the request answers 503 and the
    # connection is discarded (a hung or partitioned database).
    database_deadline: float = 1.0
    # After SIGTERM, requests still running get this long to finish (long-polls are answered at once).
    shutdown_timeout: float = 5.0
    # Live agent events kept per agent and deployment object (older ones are deleted as new ones arrive).
    events_per_object: int = 50
    limits: LimitSettings = LimitSettings()
    # TLS: with a certificate and key the API listens with TLS only; with a client CA it requires client
    # certificates signed by it. The files are checked for renewal every `tls_reload_interval` seconds.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    tls_reload_interval: float = 5.0
    # The keys that open sealed Secret data (README, "Secrets"); None: such content answers 503.
    encryption_key_file: str | None = None


SETTINGS_KEY = web.AppKey("settings", ApiSettings)


class ApiError(Exception):
    """An answer other than success; `close` ends the connection (the rest of the request is not read)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.close = close


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


def _route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Turn every failure into a JSON error and count every request by route and code."""
    metrics = request.app[METRICS_KEY]
    started = time.monotonic()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.headers)
        if exc.close:
            response.force_close()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        response = error_response(413, "body_too_large", f"the request body exceeds {limit} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        kept = {name: exc.headers[name] for name in ("Allow",) if name in exc.headers}
        response = error_response(exc.status, code, exc.reason, kept)
    except Refused as exc:
        metrics.api_limited_total.labels(exc.limit).inc()
        response = error_response(429, "too_many_requests", f"{exc.what}; retry after {exc.retry_after} s",
                                  {"Retry-After": str(exc.retry_after)})
    except CLIENT_GONE:
        # The client disconnected mid-request: nobody reads an answer. Counted as 499 (as nginx does).
        log.debug("client disconnected while sending %s %s", request.method, request.path)
        response = error_response(CLIENT_CLOSED, "client_closed", "the client closed the connection")
    except UNAVAILABLE as exc:
        unavailable(request, exc)
        response = error_response(503, "unavailable", "the database is unavailable; retry later", {"Retry-After": "2"})
    except asyncio.CancelledError:
        # The client went away (aiohttp cancels the handler of a closed connection): counted as 499.
        metrics.observe_request(_route_name(request), request.method, CLIENT_CLOSED, time.monotonic() - started)
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = error_response(500, "internal", "internal error; see the API server's log")
    metrics.observe_request(_route_name(request), request.method, response.status, time.monotonic() - started)
    return response


def unavailable(request: web.Request, exc: Exception) -> None:
    """Log a database outage once per episode (a burst of 503s is one problem, not one line per request)."""
    if request.app[EPISODES_KEY].starts("database"):
        log.warning("database unavailable while serving %s: %s (answering 503 until it is back)", request.path, exc)


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, {"WWW-Authenticate": "Bearer"})


async def authenticate(request: web.Request) -> Agent:
    """The agent behind `Authorization: Bearer <PAK>`, or 401 (400 for two headers; 429 for a source that keeps
    sending unknown keys)."""
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        raise ApiError(400, "invalid_header", "send exactly one Authorization header")
    scheme, _, token = (headers[0] if headers else "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _unauthenticated("send the agent's key as `Authorization: Bearer <PAK>`")
    key = pak.parse(token)
    if key is None:
        raise _unauthenticated("the key is not a stackyard agent key")
    secret_hash = key.secret_hash
    cache = request.app[WAITERS_KEY].cache
    agent = cache.identity(secret_hash)
    if agent is None:
        failures = request.app[LIMITER_KEY].auth_failures
        source = request.remote or ""
        failures.check(source, "too many failed authentications from this address")
        if cache.known_unknown(secret_hash):
            failures.take(source, "too many failed authentications from this address")
            raise _unauthenticated("unknown or rotated key")
        epoch = cache.epoch()
        agent = await request.app[STORE_KEY].agent_by_pak_hash(secret_hash)
        if agent is None:
            cache.remember_unknown(secret_hash)
        elif pak.matches(key, agent.pak_hash, agent.pak_key_id):
            cache.keep_identity(secret_hash, agent, epoch)
        if agent is None or not pak.matches(key, agent.pak_hash, agent.pak_key_id):
            failures.take(source, "too many failed authentications from this address")
    if agent is None or not pak.matches(key, agent.pak_hash, agent.pak_key_id):
        raise _unauthenticated("unknown or rotated key")
    return agent


async def read_json(request: web.Request, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """Read (within the body timeout), parse and validate a JSON body; 400 with the first problem."""
    settings: ApiSettings = request.app[SETTINGS_KEY]
    try:
        async with asyncio.timeout(settings.body_timeout):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {settings.body_timeout:g} s",
                       close=True) from None
    except (RequestPayloadError, ContentEncodingError) as exc:  # a Content-Encoding the body does not follow
        request.content.feed_eof()  # nothing more to read: aiohttp must not try again (and log it) after us
        raise ApiError(400, "invalid_encoding", f"the body cannot be decoded: {exc}"[:300], close=True) from None
    if raw and not is_json_media_type(request.headers.get("Content-Type")):
        raise ApiError(415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)")
    if not raw:
        if required:
            raise ApiError(400, "invalid_body", "a JSON body is required")
        return {}
    try:
        return parse_body(raw, schema)
    except InvalidInput as exc:
        raise ApiError(400, exc.code, exc.message) from None


def identity(agent: Agent, labels: list[str], annotations: dict[str, str]) -> dict[str, Any]:
    return Identity(str(agent.id), agent.name, agent.cluster_name, agent.status,
                    agent.last_heartbeat.isoformat() if agent.last_heartbeat else None, labels, annotations).to_json()


def state_document(request: web.Request, agent: Agent, stacks: list[DesiredStack]) -> dict[str, Any]:
    """The agent's target state: each stack as this agent receives it (Secret data opened: the only place it
    leaves the store in clear, and only to the agent the stacks are targeted to; overlays rendered for it)."""
    return target_state_document(str(agent.id), [wire_stack(request, agent, s) for s in stacks])


def wire_stack(request: web.Request, agent: Agent, stack: DesiredStack) -> WireStack:
    """One stack for this agent. Secret data this process cannot open is a 503 naming the key (never a partial
    state, which would make the agent prune the stacks left out); an overlay variable the agent has no value
    for is this stack's `renderError` (the agent keeps what it applied)."""
    checksum, content, error = stack.yaml_checksum, "", None
    try:
        rendering = request.app[RENDERER_KEY].for_agent(stack, agent.name, agent.cluster_name)
        checksum, content = rendering.checksum, rendering.content
    except KeyUnavailable as exc:
        raise ApiError(503, "missing_key", str(exc), {"Retry-After": "30"}) from None
    except UndefinedVariable as exc:
        error = f"OverlayFailed: {exc}"
    return WireStack(str(stack.stack_id), stack.stack_name, stack.stack_deleted, str(stack.deployment_object_id),
                     stack.sequence_id, checksum, stack.is_deletion_marker, content, error,
                     impersonation(stack.apply_as, stack.stack_name))


def impersonation(apply_as: Mapping[str, Any] | None, stack_name: str) -> dict[str, Any] | None:
    """How the agent applies a stack, as the agent contract says it (`WireStack.impersonate`)."""
    if not apply_as:
        return None
    if apply_as.get("serviceAccount"):
        return {"serviceAccount": dict(apply_as["serviceAccount"])}
    namespace = stack_name.split("/", 1)[0]
    return {"refused": f"ImpersonationRequired: the Agent requires impersonation and maps no service account to"
                       f" namespace {namespace} (spec.impersonate): nothing of this stack is applied"}


def state_etag(versions: list[Version]) -> str:
    """A strong ETag over which deployment object each stack is at, the agent's labels for a version with overlays
    (its rendering follows them), and as whom the agent applies it."""
    digest = hashlib.sha256()
    for stack_id, deployment_object_id, labels, apply_as in versions:
        digest.update(f"{stack_id}:{deployment_object_id};".encode())
        if labels is not None:
            digest.update(json.dumps(labels, sort_keys=True).encode() + b";")
        if apply_as is not None:
            digest.update(json.dumps(apply_as, sort_keys=True).encode() + b";")
    return f'"{digest.hexdigest()[:32]}"'


def _versions(stacks: list[DesiredStack]) -> list[Version]:
    return [(s.stack_id, s.deployment_object_id, s.agent_labels if s.overlays else None, s.apply_as) for s in stacks]


async def current_etag(store: Store, waiters: StateWaiters, key: tuple[str, str]) -> str:
    """The ETag of an agent's desired state: from the cache, else from the ids alone (the YAML is read only when
    the answer is not a 304)."""
    cache = waiters.cache
    cached = cache.etag(key)
    if cached is not None:
        return cached
    generation = cache.etag_generation(key)
    async with waiters.database_turn():
        etag = state_etag(await store.desired_versions(*key))
    cache.keep_etag(key, etag, generation)
    return etag


async def etag_after_change(store: Store, waiters: StateWaiters, key: tuple[str, str], known: str | None,
                            wait: float) -> str:
    """The long-poll: the current ETag once it differs from `known`, or after `wait` seconds (or at once when the
    process is shutting down).

    While the listener is not proven alive nothing would wake it, so it reads the state again every
    `UNWOKEN_RECHECK` seconds instead (a change still arrives; the database pays one cheap read per waiting
    agent per period, and only during such an outage).
    """
    with waiters.subscribe(key) as changed:  # before reading: a change in between is not missed
        etag = await current_etag(store, waiters, key)
        deadline = time.monotonic() + wait
        while (none_match(known, etag) and not waiters.closing
               and (remaining := deadline - time.monotonic()) > 0):
            woken = waiters.cache.enabled
            try:
                await asyncio.wait_for(changed.wait(), remaining if woken else min(remaining, UNWOKEN_RECHECK))
            except TimeoutError:
                if woken or time.monotonic() >= deadline:
                    break
            changed.clear()
            etag = await current_etag(store, waiters, key)
    return etag


def own_agent_id(request: web.Request, agent: Agent) -> None:
    """403 unless the path's agent id is the caller's own (400 unless it is a UUID in its canonical form)."""
    asked = canonical_uuid(request.match_info["agent_id"])
    if asked is None:
        raise ApiError(400, "invalid_agent_id", "the agent id must be a UUID in canonical form"
                                                " (lower-case hex, 8-4-4-4-12 with dashes)")
    if asked != agent.id:
        raise ApiError(403, "forbidden", "an agent may only read its own data")


# Handlers ----------------------------------------------------------------------------------


async def _identity_response(request: web.Request, agent: Agent) -> web.Response:
    store = request.app[STORE_KEY]
    fresh = await store.get_agent(agent.id) or agent  # the cached identity's status and heartbeat may be old
    labels, annotations = await store.agent_metadata(agent.id)
    return web.json_response(identity(fresh, labels, annotations))


async def get_self(request: web.Request) -> web.Response:
    return await _identity_response(request, await authenticate(request))


async def get_agent(request: web.Request) -> web.Response:
    agent = await authenticate(request)
    own_agent_id(request, agent)
    return await _identity_response(request, agent)


async def heartbeat(request: web.Request) -> web.Response:
    agent = await authenticate(request)
    request.app[LIMITER_KEY].heartbeats.take(agent.id, "heartbeats of this agent come too fast")
    beat = Heartbeat.from_json(await read_json(request, HEARTBEAT_REQUEST, required=False))
    try:
        at = await request.app[STORE_KEY].heartbeat(agent.id, beat.status, beat.held_stacks)
    except NotFound:
        raise ApiError(401, "unauthenticated", "the agent was deleted") from None
    return web.json_response({"lastHeartbeat": at.isoformat()})


async def target_state(request: web.Request) -> web.Response:
    agent = await authenticate(request)
    settings: ApiSettings = request.app[SETTINGS_KEY]
    try:
        wait = parse_wait(request.query.get("wait", "0"), settings.max_wait_seconds)
    except InvalidInput as exc:
        raise ApiError(400, exc.code, exc.message) from None
    known = request.headers.get("If-None-Match")
    store = request.app[STORE_KEY]
    waiters = request.app[WAITERS_KEY]
    key = (agent.name, agent.cluster_name)
    if wait == 0 or waiters.closing:  # no long-poll: nothing to subscribe to
        etag = await current_etag(store, waiters, key)
    else:
        with request.app[LIMITER_KEY].long_poll(agent.id):
            etag = await etag_after_change(store, waiters, key, known, wait)
    if none_match(known, etag):
        return web.Response(status=304, headers={"ETag": etag})
    async with waiters.database_turn():
        stacks = await store.desired_state(agent.name, agent.cluster_name)
    etag = state_etag(_versions(stacks))
    return web.json_response(state_document(request, agent, stacks), headers={"ETag": etag, "Cache-Control": "no-cache"})


async def other_target_state(request: web.Request) -> web.Response:
    agent = await authenticate(request)
    own_agent_id(request, agent)
    stacks = await request.app[STORE_KEY].desired_state(agent.name, agent.cluster_name)
    return web.json_response(state_document(request, agent, stacks), headers={"ETag": state_etag(_versions(stacks))})


async def post_events(request: web.Request) -> web.Response:
    agent = await authenticate(request)
    body = await read_json(request, EVENTS_REQUEST)
    events = [EventIn(uuid.UUID(e.deployment_object_id), e.event_type, e.status, e.message, e.details, e.checksum)
              for e in map(Event.from_json, body["events"])]
    request.app[LIMITER_KEY].events.take(agent.id, "events of this agent come too fast", len(events))
    try:
        ids = await request.app[STORE_KEY].record_events(agent, events,
                                                         request.app[SETTINGS_KEY].events_per_object)
    except NotTargeted as exc:
        raise ApiError(404, "not_targeted", f"no deployment object targeted to this agent: {exc.ids[0]}") from None
    return web.json_response({"accepted": len(ids), "ids": [str(i) for i in ids]})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(schemas.openapi_document(__version__, request.app[SETTINGS_KEY].max_wait_seconds))


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[STORE_KEY].ping(request.app[SETTINGS_KEY].database_timeout)
    return web.json_response({"status": "ready"})


def metrics_endpoint(metrics: Metrics, store: Store) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """prometheus-client's aiohttp handler, with the pool gauges brought up to date first."""
    exposition = make_aiohttp_handler(metrics.registry)

    async def handler(request: web.Request) -> web.StreamResponse:
        metrics.observe_pool(store.pool.get_stats())
        return await exposition(request)

    return handler


def api_routes() -> list[web.RouteDef]:
    """The API's routes; their paths are the `route` label of its metrics (alert and dashboard queries name
    them: tests/test_monitoring.py checks those against this list)."""
    return [
        web.get("/api/v1/agents/self", get_self),
        web.post("/api/v1/agents/self/heartbeat", heartbeat),
        web.get("/api/v1/agents/self/target-state", target_state),
        web.post("/api/v1/agents/self/events", post_events),
        web.get("/api/v1/agents/{agent_id}", get_agent),
        web.get("/api/v1/agents/{agent_id}/target-state", other_target_state),
        web.get("/api/v1/openapi.json", openapi),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
    ]


def create_app(
    store: Store, metrics: Metrics, waiters: StateWaiters, settings: ApiSettings | None = None, serve_metrics: bool = True
) -> web.Application:
    """The API app. `waiters.run()` must be running for long-polls to wake early."""
    settings = settings or ApiSettings()
    app = web.Application(middlewares=[errors_and_metrics], client_max_size=settings.max_body_bytes)
    app[STORE_KEY] = store
    app[METRICS_KEY] = metrics
    app[WAITERS_KEY] = waiters
    app[SETTINGS_KEY] = settings
    app[LIMITER_KEY] = Limiter(settings.limits)
    app[EPISODES_KEY] = Episodes()
    app[RENDERER_KEY] = Renderer(Keyring.from_file(settings.encryption_key_file) if settings.encryption_key_file
                                 else None)

    async def answer_long_polls(_: web.Application) -> None:
        waiters.close()  # SIGTERM: sites have stopped accepting; waiting long-polls answer now

    app.on_shutdown.append(answer_long_polls)
    metrics.api_long_polls.set_function(app[LIMITER_KEY].long_polls)
    metrics.api_listener_up.set_function(lambda: 1.0 if waiters.cache.enabled else 0.0)
    routes = api_routes()
    if serve_metrics:
        routes.append(web.get("/metrics", metrics_endpoint(metrics, store)))
    app.add_routes(routes)
    return app
