"""Threshold alert rules, and webhook deliveries that survive receiver outages and restarts.

Every triggered or resolved alert becomes a delivery in the Alertmanager webhook
format (version 4), stored in SQLite until the receiver answers 2xx. Each
delivery carries a stable id (server, rule, state, start time: the same alert
always has the same id), in the payload's `id` and the `Idempotency-Key`
header, so a receiver can drop a duplicate after a timed-out attempt.
Deliveries are retried independently, with jittered exponential backoff capped
at `alerts.max_backoff`, and given up (counted, logged) after `alerts.max_age`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp

from ..backoff import Backoff
from .config import AlertRule
from .storage import History

if TYPE_CHECKING:
    from .monitor import Exporter

log = logging.getLogger(__name__)

RECEIVER = "stackyard-dbagent"
MAX_IN_FLIGHT = 8  # deliveries attempted at once; one slow receiver call never holds up the others
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_labels(server: str, rule: AlertRule) -> dict[str, str]:
    return {"alertname": rule.name, "server": server, "metric": rule.metric, **dict(rule.labels)}


def delivery_id(server: str, rule: str, state: str, started: float) -> str:
    """The same alert (server, rule, state, start time) always has the same id."""
    return hashlib.sha256(f"{server}\0{rule}\0{state}\0{started:.6f}".encode()).hexdigest()[:32]


def webhook_payload(server: str, rule: AlertRule, state: str, value: float, started: float, now: float,
                    message: str) -> dict[str, Any]:
    """One alert in Alertmanager's webhook format (version 4), plus `id`, the stable delivery id."""
    status = "firing" if state == "triggered" else "resolved"
    labels = alert_labels(server, rule)
    annotations = {"summary": message, "value": f"{value:g}", "threshold": f"{rule.op} {rule.threshold:g}"}
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    group_labels = {"alertname": rule.name, "server": server}
    return {
        "id": delivery_id(server, rule.name, state, started),
        "version": "4",
        "groupKey": "{}:{" + ", ".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "",
        "alerts": [{
            "status": status, "labels": labels, "annotations": annotations, "startsAt": _rfc3339(started),
            "endsAt": _rfc3339(now) if status == "resolved" else ZERO_TIME, "generatorURL": "",
            "fingerprint": fingerprint,
        }],
    }


def _forget(in_flight: dict[str, asyncio.Task], key: str, _task: asyncio.Task) -> None:
    in_flight.pop(key, None)


@dataclass
class Delivery:
    payload: dict[str, Any]
    created: float
    next_attempt: float
    attempts: int = 0


@dataclass
class Alerts:
    """Threshold rules per instance; triggered and resolved rows, and deliveries that never block collection."""

    history: History
    exporter: Exporter
    rules: tuple[AlertRule, ...] = ()
    webhook_url: str | None = None
    enabled: bool = True
    timeout: float = 10.0
    max_age: float = 86400.0
    max_backoff: float = 300.0
    first_delay: float = 1.0
    pending: dict[tuple[str, str], float] = field(default_factory=dict)  # breached since
    firing: dict[tuple[str, str], float] = field(default_factory=dict)  # started at
    outbox: dict[str, Delivery] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def evaluate(self, server: str, values: dict[str, float], now: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.time() if now is None else now
        for rule in self.rules:
            if rule.metric not in values:
                continue
            key, value = (server, rule.name), values[rule.metric]
            if rule.breached(value):
                since = self.pending.setdefault(key, now)
                if key not in self.firing and now - since >= rule.for_seconds:
                    self.firing[key] = now
                    self._record(server, rule, "triggered", value, now, now)
            else:
                self.pending.pop(key, None)
                if key in self.firing:
                    self._record(server, rule, "resolved", value, self.firing.pop(key), now)

    def _record(self, server: str, rule: AlertRule, state: str, value: float, started: float, now: float) -> None:
        message = f"{rule.metric} {rule.op} {rule.threshold:g} on {server}: value {value:g} ({state})"
        log.warning("alert %s %s: %s", rule.name, state, message)
        self.history.insert("alert_events", server, [(rule.name, rule.metric, state, value, rule.threshold, message)],
                            now)
        if self.webhook_url:
            payload = webhook_payload(server, rule, state, value, started, now, message)
            self.outbox[payload["id"]] = Delivery(payload, now, now)
            self.history.save_delivery(payload["id"], payload, now)  # kept in memory too if this write fails
            self.exporter.deliveries_pending.set(len(self.outbox))
            self.wake.set()

    def load(self) -> None:
        """Deliveries left by an earlier run (the receiver was down, or the sidecar restarted)."""
        for row in self.history.deliveries():
            self.outbox.setdefault(row["id"], Delivery(row["payload"], row["created"], row["next_attempt"],
                                                       row["attempts"]))
        self.exporter.deliveries_pending.set(len(self.outbox))

    async def deliver_forever(self) -> None:
        """Attempt every due delivery, each on its own schedule, until cancelled."""
        self.load()
        in_flight: dict[str, asyncio.Task] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            try:
                while True:
                    now = time.time()
                    for delivery_id, delivery in sorted(self.outbox.items(), key=lambda d: d[1].next_attempt):
                        if len(in_flight) >= MAX_IN_FLIGHT or delivery.next_attempt > now:
                            break
                        if delivery_id not in in_flight:
                            task = asyncio.create_task(self._attempt(session, delivery_id, delivery))
                            in_flight[delivery_id] = task
                            task.add_done_callback(partial(_forget, in_flight, delivery_id))
                    waiting = [d.next_attempt for k, d in self.outbox.items() if k not in in_flight]
                    delay = max(0.05, min(waiting) - now) if waiting else 60.0
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), timeout=delay)
                    except TimeoutError:
                        pass
            finally:
                for task in in_flight.values():
                    task.cancel()

    async def _attempt(self, session: aiohttp.ClientSession, delivery_id: str, delivery: Delivery) -> None:
        try:
            if self.webhook_url is None:
                raise RuntimeError("no webhook_url is configured")
            headers = {"Idempotency-Key": delivery_id}
            async with session.post(self.webhook_url, json=delivery.payload, headers=headers) as response:
                if response.status < 300:
                    self._settled(delivery_id)
                    return
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            problem = str(exc) or type(exc).__name__
        now = time.time()
        delivery.attempts += 1
        if now - delivery.created >= self.max_age:
            self.exporter.webhook_failures_total.inc()
            log.error("alert webhook %s: gave up delivery %s (%s) after %d attempts over %.0fs: %s", self.webhook_url,
                      delivery_id, delivery.payload["groupLabels"]["alertname"], delivery.attempts,
                      now - delivery.created, problem)
            self._settled(delivery_id)
            return
        delay = Backoff(self.first_delay, self.max_backoff, attempts=delivery.attempts - 1).next_delay()
        delivery.next_attempt = now + delay
        if delivery.attempts == 1:
            log.warning("alert webhook %s failed (%s); retrying delivery %s with backoff for up to %.0fs",
                        self.webhook_url, problem, delivery_id, self.max_age)
        self.history.update_delivery(delivery_id, delivery.next_attempt, delivery.attempts, problem)
        self.wake.set()

    def _settled(self, delivery_id: str) -> None:
        self.outbox.pop(delivery_id, None)
        self.history.remove_delivery(delivery_id)
        self.exporter.deliveries_pending.set(len(self.outbox))
        self.wake.set()
