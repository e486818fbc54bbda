"""The agent's client of the agent API (the broker)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..protocol import MAX_EVENTS_PER_BATCH, Event, Heartbeat, Identity, events_body
from ..tls import ReloadingContext


class BrokerError(Exception):
    """A call to the broker failed; `status` is the HTTP status, 0 when unreachable; `retry_after` the seconds the
    broker asked to wait (429, 503), if it said; `sent` how many items of a batch were accepted before it failed."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, sent: int = 0):
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status
        self.retry_after = retry_after
        self.sent = sent


@dataclass(frozen=True)
class StateAnswer:
    changed: bool
    etag: str | None
    document: dict[str, Any] | None


class BrokerClient:
    """Calls the API with the key that `read_key` returns (re-read on every call, so a rotated Secret is picked up)."""

    def __init__(self, base_url: str, read_key: Callable[[], str], timeout: float = 10.0,
                 tls: ReloadingContext | None = None):
        self.base_url = base_url.rstrip("/")
        self.read_key = read_key
        self.timeout = timeout
        self.tls = tls  # the CAs and client certificate, re-read when their files change
        self._session: aiohttp.ClientSession | None = None

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "stackyard-agent"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> tuple[int, Mapping[str, str], Any]:
        all_headers = {"Authorization": f"Bearer {self.read_key()}", **(headers or {})}
        if self.tls is not None:
            self.tls.refresh()
        try:
            async with self._session_now().request(
                method, self.base_url + path, json=body, headers=all_headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                ssl=self.tls.context if self.tls is not None else True,
            ) as response:
                text = await response.text()
                payload = json.loads(text) if text and response.content_type == "application/json" else None
                if response.status >= 400 and response.status != 304:
                    message = payload.get("message") if isinstance(payload, dict) else text[:200]
                    raise BrokerError(response.status, str(message), _seconds(response.headers.get("Retry-After")))
                # aiohttp's headers are case-insensitive; a plain dict is not (the server sends "Etag").
                return response.status, response.headers.copy(), payload
        except aiohttp.ClientConnectorCertificateError as exc:
            raise BrokerError(0, f"the broker's certificate is not trusted ({exc.certificate_error}); give the agent"
                                 " the CA that signed it with --ca-file") from None
        except aiohttp.ClientError as exc:
            raise BrokerError(0, str(exc) or type(exc).__name__) from None
        except TimeoutError:
            raise BrokerError(0, f"{method} {path} timed out") from None

    async def identity(self) -> Identity:
        return Identity.from_json((await self._call("GET", "/api/v1/agents/self"))[2])

    async def heartbeat(self, beat: Heartbeat) -> None:
        await self._call("POST", "/api/v1/agents/self/heartbeat", beat.to_json())

    async def target_state(self, etag: str | None, wait: int) -> StateAnswer:
        headers = {"If-None-Match": etag} if etag else {}
        status, response_headers, payload = await self._call(
            "GET", f"/api/v1/agents/self/target-state?wait={wait}", headers=headers, timeout=wait + self.timeout
        )
        if status == 304:
            return StateAnswer(False, etag, None)
        return StateAnswer(True, response_headers.get("ETag"), payload)

    async def post_events(self, events: list[Event]) -> None:
        """Post events in batches of MAX_EVENTS_PER_BATCH; a failure says how many went through (`BrokerError.sent`)."""
        for start in range(0, len(events), MAX_EVENTS_PER_BATCH):
            try:
                await self._call("POST", "/api/v1/agents/self/events",
                                 events_body(events[start:start + MAX_EVENTS_PER_BATCH]))
            except BrokerError as exc:
                exc.sent = start
                raise


def _seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (the date form is not used by stackyard's API)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
