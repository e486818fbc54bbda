"""Serving the agent API: JSON errors even for what aiohttp refuses before the app sees it, and timeouts.

aiohttp answers malformed HTTP itself (a bad header line, an oversized header
or URL, Content-Length together with Transfer-Encoding) with a text/plain body
and an ERROR log line with a traceback. The API promises a JSON `{code,
message}` body for every error, and a client's bad request is not the
server's error, so the protocol handler is replaced with one that answers in
JSON and logs at DEBUG. aiohttp offers no public hook for this; the subclass
relies on `RequestHandler.handle_error` and `AppRunner._make_server`, which the
pinned aiohttp version has and tests/test_api_hardening.py exercises.

The same handler enforces the process's connection limit: a connection over
it is closed as soon as it is accepted (counted, logged once per episode), so
a flood uses up neither the open-file limit nor the log. And a handler whose
client went away is cancelled (`handler_cancellation`): an abandoned long-poll
ends with its connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from ..logs import Episodes

log = logging.getLogger(__name__)

# The request line starts with the target; a header line with its name, which cannot hold `/` (RFC 9110 §5.6.2).
_REQUEST_TARGET_STARTS = (b"/", b"http:", b"https:", b"*")


class ConnectionGuard:
    """The process's limit on open connections (`--api-max-connections`)."""

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None):
        self.limit = limit
        self.on_refused = on_refused
        self.episodes = Episodes()

    def admit(self, open_connections: int) -> bool:
        if open_connections < self.limit:
            return True
        if self.on_refused is not None:
            self.on_refused()
        if self.episodes.starts("refused"):
            log.warning("refusing connections: %d are open, the limit is %d (--api-max-connections)",
                        open_connections, self.limit)
        return False


def too_long_status(exc: BaseException | None) -> int | None:
    """414 for a request line over the limit, 431 for a header line over it; None for anything else."""
    if not isinstance(exc, LineTooLong):
        return None
    line = exc.args[0] if exc.args else b""
    line = line.encode("latin-1", "replace") if isinstance(line, str) else bytes(line)
    return 414 if line.startswith(_REQUEST_TARGET_STARTS) else 431

CODES = {400: "bad_request", 408: "request_timeout", 413: "body_too_large", 414: "uri_too_long",
         431: "headers_too_large", 500: "internal"}


class JsonErrorRequestHandler(RequestHandler):
    """A protocol handler whose own error answers are JSON, and which refuses connections over the limit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard: ConnectionGuard | None = getattr(self._manager, "guard", None)
        if guard is not None and self._manager is not None and not guard.admit(len(self._manager.connections)):
            self._refused = True
            cast(asyncio.Transport, transport).abort()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if getattr(self, "_refused", False):
            return
        super().connection_lost(exc)

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        status = too_long_status(exc) or status
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
    guard: ConnectionGuard | None = None

    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in JSON, within a connection limit.

    `idle_timeout` closes a connection that has not sent a complete request
    within that time (a slow or stalled header), and an idle keep-alive
    connection after it: aiohttp's keep-alive timer covers both. A handler
    whose client disconnects is cancelled; after SIGTERM, handlers still
    running get `shutdown_timeout` seconds.
    """

    def __init__(self, app: web.Application, idle_timeout: float, guard: ConnectionGuard | None = None,
                 shutdown_timeout: float = 5.0, **kwargs: Any):
        super().__init__(app, keepalive_timeout=idle_timeout, access_log=None, handler_cancellation=True,
                         shutdown_timeout=shutdown_timeout, **kwargs)
        self.guard = guard

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = JsonErrorServer
        assert isinstance(server, JsonErrorServer)
        server.guard = self.guard
        return server


ACCEPT_FAILED = "socket.accept() out of system resource"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, on_error: Callable[[], None] | None = None) -> None:
    """Log asyncio's `accept()` failures (out of file descriptors) once per episode instead of a traceback each
    time the loop retries; every other loop error goes to the handler that was there before."""
    previous = loop.get_exception_handler()
    episodes = Episodes()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith(ACCEPT_FAILED):
            if on_error is not None:
                on_error()
            if episodes.starts("accept"):
                log.error("cannot accept connections: %s; lower --api-max-connections below the open-file limit"
                          " or raise the limit", context.get("exception"))
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
