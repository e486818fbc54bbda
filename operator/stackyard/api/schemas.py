"""The OpenAPI document of the agent API, assembled from the contract's schemas (`protocol.py`)."""

from __future__ import annotations

from typing import Any

from ..protocol import (
    EVENTS_REQUEST,
    EVENTS_RESPONSE,
    HEARTBEAT_REQUEST,
    HEARTBEAT_RESPONSE,
    IDENTITY,
    TARGET_STATE,
)
from .validation import CANONICAL_UUID

ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}

HEALTH = {"type": "object", "properties": {"status": {"type": "string"}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


ERROR_TEXT = {
    400: "Malformed request (a bad header, query, path id or body)",
    401: "Missing, malformed, unknown or rotated key",
    403: "Not this agent's data",
    404: "Not found",
    405: "Method not allowed (see the Allow header)",
    408: "The request body did not arrive in time",
    413: "Body too large",
    414: "Request line (URL) too long",
    415: "The body is not JSON (Content-Type must be application/json)",
    429: "A limit of this agent or address was reached; retry after Retry-After seconds",
    431: "Request header too large",
    503: "Database unavailable; retry after Retry-After seconds",
}
# Every route can answer these: aiohttp's own refusals (400, 414, 431), a wrong method (405), a body sent where
# none is read (413), an outage (503).
ALWAYS = (400, 405, 413, 414, 431, 503)
# Routes that authenticate can also answer 401, and 429 for an address that keeps sending unknown keys.
AUTHENTICATED = (401, 429)


def _errors(*codes: int) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code in sorted(set(codes) | set(ALWAYS)):
        response: dict[str, Any] = {"description": ERROR_TEXT[code], "content": _json({"$ref": "#/components/schemas/Error"})}
        if code == 405:
            response["headers"] = {"Allow": {"schema": {"type": "string"}}}
        if code in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(code)] = response
    return responses


def openapi_document(version: str, max_wait_seconds: int = 60) -> dict[str, Any]:
    """OpenAPI 3.0 document of every route the app serves (checked against the router in tests)."""
    secured: list[dict[str, list[str]]] = [{"pak": []}]
    agent_id_param = {"name": "agentId", "in": "path", "required": True,
                      "schema": {"type": "string", "format": "uuid", "pattern": CANONICAL_UUID}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "stackyard agent API", "version": version},
        "components": {
            "securitySchemes": {"pak": {"type": "http", "scheme": "bearer", "bearerFormat": "sy_<id>_<secret>"}},
            "schemas": {"Error": ERROR},
        },
        "paths": {
            "/api/v1/agents/self": {"get": {
                "summary": "This agent's identity", "security": secured,
                "responses": {"200": {"description": "Identity", "content": _json(IDENTITY)}, **_errors(*AUTHENTICATED)},
            }},
            "/api/v1/agents/{agentId}": {"get": {
                "summary": "An agent's identity; only an agent's own id is allowed", "security": secured,
                "parameters": [agent_id_param],
                "responses": {"200": {"description": "Identity", "content": _json(IDENTITY)},
                              **_errors(*AUTHENTICATED, 403)},
            }},
            "/api/v1/agents/self/heartbeat": {"post": {
                "summary": "Record a heartbeat", "security": secured,
                "requestBody": {"required": False, "content": _json(HEARTBEAT_REQUEST)},
                "responses": {"200": {"description": "Recorded", "content": _json(HEARTBEAT_RESPONSE)},
                              **_errors(*AUTHENTICATED, 408, 415)},
            }},
            "/api/v1/agents/self/target-state": {"get": {
                "summary": "The full desired state of this agent", "security": secured,
                "parameters": [
                    {"name": "wait", "in": "query", "required": False,
                     "description": f"long-poll up to this many seconds for a change (0-{max_wait_seconds})",
                     "schema": {"type": "integer", "minimum": 0, "maximum": max_wait_seconds}},
                    {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {"description": "Desired state", "headers": {"ETag": {"schema": {"type": "string"}}},
                            "content": _json(TARGET_STATE)},
                    "304": {"description": "Unchanged since If-None-Match",
                            "headers": {"ETag": {"schema": {"type": "string"}}}},
                    **_errors(*AUTHENTICATED),
                },
            }},
            "/api/v1/agents/{agentId}/target-state": {"get": {
                "summary": "An agent's desired state; only an agent's own id is allowed", "security": secured,
                "parameters": [agent_id_param],
                "responses": {"200": {"description": "Desired state", "headers": {"ETag": {"schema": {"type": "string"}}},
                                      "content": _json(TARGET_STATE)},
                              **_errors(*AUTHENTICATED, 403)},
            }},
            "/api/v1/agents/self/events": {"post": {
                "summary": "Report a batch of events: APPLY and DELETE results, HEALTH changes, DRIFT repairs",
                "security": secured,
                "requestBody": {"required": True, "content": _json(EVENTS_REQUEST)},
                "responses": {"200": {"description": "Stored", "content": _json(EVENTS_RESPONSE)},
                              **_errors(*AUTHENTICATED, 404, 408, 415)},
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document", "responses": {"200": {"description": "OpenAPI document",
                                                                   "content": _json({"type": "object"})},
                                                          **_errors()},
            }},
            "/healthz": {"get": {"summary": "Liveness",
                                 "responses": {"200": {"description": "Alive", "content": _json(HEALTH)}, **_errors()}}},
            "/readyz": {"get": {"summary": "Readiness: the database answers",
                                "responses": {"200": {"description": "Ready", "content": _json(HEALTH)}, **_errors()}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}},
                                               **_errors()}}},
        },
    }
