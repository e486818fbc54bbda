"""Alert deliveries: Alertmanager's webhook format, stable ids, durable across receiver outages and restarts,
independent retries. Real HTTP receivers on 127.0.0.1, real SQLite files, a real PostgreSQL for collection."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from stackyard.dbagent.alerts import Alerts
from stackyard.dbagent.config import parse_config
from stackyard.dbagent.monitor import Exporter
from stackyard.dbagent.storage import History
from stackyard.store.embedded import free_port

from .operator_harness import eventually
from .test_dbagent import make_monitors, servers  # noqa: F401  (module-scoped PostgreSQL servers)

RULES = [{"name": "busy", "metric": "connections", "op": ">=", "threshold": 1, "labels": {"severity": "page"}},
         {"name": "slow", "metric": "longest_query_seconds", "op": ">", "threshold": 5}]


class Receiver:
    """An HTTP webhook receiver whose answer the test decides per alert name."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []  # (Idempotency-Key, payload) of every request
        self.answer: dict[str, int] = {}  # alertname -> status (default 200)
        self.delay = 0.0
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def hook(self, request: web.Request) -> web.Response:
        payload = await request.json()
        self.received.append((request.headers.get("Idempotency-Key", ""), payload))
        await asyncio.sleep(self.delay)
        return web.json_response({}, status=self.answer.get(payload["groupLabels"]["alertname"], 200))

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def named(self, name: str) -> list[dict]:
        return [p for _, p in self.received if p["groupLabels"]["alertname"] == name]


def make_alerts(path, url: str, **alerts) -> tuple[History, Exporter, Alerts]:
    config = parse_config({"alerts": {"webhook_url": url, "rules": RULES, **alerts}}, "host=unused")
    history, exporter = History(path), Exporter()
    alerting = Alerts(history, exporter, config.rules, config.webhook_url, True, config.webhook_timeout,
                      config.alert_max_age, config.alert_max_backoff, first_delay=0.1)
    return history, exporter, alerting


async def _running(alerts: Alerts):
    return asyncio.create_task(alerts.deliver_forever())


async def test_fire_and_resolve_in_alertmanager_format_with_stable_ids(tmp_path):
    receiver = await Receiver().start()
    history, _, alerts = make_alerts(tmp_path / "h.sqlite", receiver.url)
    task = await _running(alerts)
    try:
        alerts.evaluate("primary", {"connections": 3.0}, now=1000.0)
        alerts.evaluate("primary", {"connections": 0.0}, now=1060.0)
        await eventually(lambda: _count(receiver, 2))
        (key1, firing), (key2, resolved) = receiver.received
        assert firing["version"] == "4" and firing["status"] == "firing" and resolved["status"] == "resolved"
        (alert,) = firing["alerts"]
        assert alert["labels"] == {"alertname": "busy", "server": "primary", "metric": "connections",
                                   "severity": "page"}
        assert alert["startsAt"] == "1970-01-01T00:16:40.000Z" and alert["endsAt"] == "0001-01-01T00:00:00Z"
        assert resolved["alerts"][0]["startsAt"] == alert["startsAt"]
        assert resolved["alerts"][0]["endsAt"] == "1970-01-01T00:17:40.000Z"
        assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"], "one alert, two states"
        assert key1 == firing["id"] and key2 == resolved["id"] and key1 != key2
        assert [r["state"] for r in history.rows("alert_events")] == ["triggered", "resolved"]
        await eventually(lambda: _settled(history))
    finally:
        task.cancel()
        await receiver.stop()


async def test_a_receiver_down_then_up_gets_each_alert_once_even_across_a_restart(tmp_path):
    path, port = tmp_path / "h.sqlite", free_port()
    url = f"http://127.0.0.1:{port}/hook"
    history, exporter, alerts = make_alerts(path, url, max_backoff="200ms")
    task = await _running(alerts)
    alerts.evaluate("primary", {"connections": 3.0})
    await eventually(lambda: _attempted(history, 3))  # refused three times, with backoff
    task.cancel()
    history.close()  # the sidecar restarts while the receiver is still down

    receiver = Receiver()
    receiver.port = port
    await receiver.start()
    history, exporter, alerts = make_alerts(path, url, max_backoff="200ms")
    task = await _running(alerts)
    try:
        await eventually(lambda: _count(receiver, 1))
        await eventually(lambda: _settled(history))
        assert len(receiver.named("busy")) == 1 and receiver.received[0][1]["status"] == "firing"
        assert exporter.registry.get_sample_value("stackyard_dbagent_webhook_failures_total") == 0
    finally:
        task.cancel()
        await receiver.stop()


async def test_a_slow_receiver_sees_one_id_and_one_alerts_retries_do_not_hold_up_another(tmp_path):
    receiver = await Receiver().start()
    receiver.delay = 1.5  # slower than the client timeout: every attempt of "busy" times out
    history, _, alerts = make_alerts(tmp_path / "h.sqlite", receiver.url, timeout="500ms", max_backoff="300ms")
    task = await _running(alerts)
    try:
        alerts.evaluate("primary", {"connections": 3.0})
        await eventually(lambda: _count(receiver, 3))
        assert len({key for key, _ in receiver.received}) == 1, "every attempt carries the same id"

        receiver.delay, receiver.answer["busy"] = 0.0, 500  # "busy" keeps failing; "slow" must not wait for it
        alerts.evaluate("primary", {"longest_query_seconds": 10.0})
        await eventually(lambda: _named(receiver, "slow", 1), timeout=3)
        busy_attempts = len(receiver.named("busy"))
        await eventually(lambda: _named(receiver, "busy", busy_attempts + 2))  # and "busy" goes on retrying
        assert [d["payload"]["groupLabels"]["alertname"] for d in history.deliveries()] == ["busy"]
    finally:
        task.cancel()
        await receiver.stop()


async def test_a_delivery_older_than_max_age_is_given_up_and_counted(tmp_path):
    history, exporter, alerts = make_alerts(tmp_path / "h.sqlite", f"http://127.0.0.1:{free_port()}/hook",
                                            max_age="1s", max_backoff="200ms")
    task = await _running(alerts)
    try:
        alerts.evaluate("primary", {"connections": 3.0})
        await eventually(lambda: _gave_up(exporter))
        assert history.deliveries() == []
    finally:
        task.cancel()


async def test_collection_is_not_held_up_by_a_dead_webhook(servers, tmp_path):  # noqa: F811
    rules = [{"name": "busy", "metric": "connections", "op": ">=", "threshold": 1}]
    history, _, alerts, monitors = make_monitors(
        tmp_path, {"plain": servers["plain"].url()},
        alerts={"enabled": True, "webhook_url": f"http://127.0.0.1:{free_port()}/hook", "rules": rules})
    task = await _running(alerts)
    try:
        started = time.monotonic()
        for _ in range(5):
            assert await monitors["plain"].collect("metrics") is not None
        assert time.monotonic() - started < 1.0, "collection is not held up by the webhook"
        assert [r["state"] for r in history.rows("alert_events")] == ["triggered"]
        assert len(history.deliveries()) == 1
    finally:
        task.cancel()
        await monitors["plain"].close()


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.received) >= n


async def _named(receiver: Receiver, name: str, n: int) -> bool:
    return len(receiver.named(name)) >= n


async def _settled(history: History) -> bool:
    return history.deliveries() == []


async def _attempted(history: History, n: int) -> bool:
    return any(d["attempts"] >= n for d in history.deliveries())


async def _gave_up(exporter: Exporter) -> bool:
    return exporter.registry.get_sample_value("stackyard_dbagent_webhook_failures_total") == 1
