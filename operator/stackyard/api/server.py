"""Serving the agent API: JSON errors even for what aiohttp refuses before the app sees it, and timeouts.

aiohttp answers malformed HTTP itself (a bad header line, an oversized header
or URL, Content-Length together with Transfer-Encoding) with a text/plain body
and an ERROR log line with a traceback. The API promises a JSON `{code,
message}` body for every error, and a client's bad request is not the
server's error, so the protocol handler is replaced with one that answers in
JSON and logs at DEBUG. aiohttp offers no public hook for this; the subclass
relies on `RequestHandler.handle_error` and `AppRunner._make_server`, which the
pinned aiohttp version has and tests/test_api_hardening.py exercises.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

log = logging.getLogger(__name__)

CODES = {400: "bad_request", 408: "request_timeout", 413: "body_too_large", 414: "uri_too_long",
         431: "headers_too_large", 500: "internal"}


class JsonErrorRequestHandler(RequestHandler):
    """A protocol handler whose own error answers are JSON."""

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused a malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started; cannot send an error")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        text = message if status < 500 and message else phrase
        body = json.dumps({"code": CODES.get(status, "http_error"), "message": str(text)[:500]})
        response = web.Response(status=status, text=body, content_type="application/json")
        response.force_close()
        return response


class JsonErrorServer(Server):
    __slots__ = ()

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in JSON.

    `idle_timeout` closes a connection that has not sent a complete request
    within that time (a slow or stalled header), and an idle keep-alive
    connection after it: aiohttp's keep-alive timer covers both.
    """

    def __init__(self, app: web.Application, idle_timeout: float, **kwargs: Any):
        super().__init__(app, keepalive_timeout=idle_timeout, access_log=None, **kwargs)

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer
        return server
