"""A real Kopf operator loop in its own thread, against the emulated API server and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import kopf

from stackyard.config import GROUP, VERSION, OperatorConfig
from stackyard.controller.operator import run_operator
from stackyard.metrics import Metrics

from .emulator import KubeServer, LoopThread
from .kubectl import ApiResource, KubeClient

T = TypeVar("T")

STACKS = ApiResource(f"{GROUP}/{VERSION}", "Stack", "stacks", True)
AGENT_TARGETS = ApiResource(f"{GROUP}/{VERSION}", "AgentTarget", "agenttargets", True)
AGENTS = ApiResource(f"{GROUP}/{VERSION}", "Agent", "agents", True)


class OperatorThread:
    """Starts and stops one operator; several can run one after another on the same state."""

    def __init__(self, kube: KubeServer, config: OperatorConfig):
        self.kube = kube
        self.config = config
        self.metrics = Metrics()
        self.thread: LoopThread | None = None
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.future: Any = None

    def start(self) -> "OperatorThread":
        self.thread = LoopThread("operator")
        self.stop_flag.clear()
        self.ready_flag.clear()
        self.future = asyncio.run_coroutine_threadsafe(
            run_operator(self.config, self.metrics, stop_flag=self.stop_flag, ready_flag=self.ready_flag),
            self.thread.loop,
        )
        if not self.ready_flag.wait(timeout=30):
            raise RuntimeError("the operator did not become ready in 30 s")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        try:
            if self.future is not None:
                self.future.result(timeout=30)
        finally:
            if self.thread is not None:
                self.thread.stop()
            self.thread = None


def operator_config(database_url: str, kube: KubeServer, **overrides: Any) -> OperatorConfig:
    """Operator settings for tests: short intervals, the emulator's URL."""
    values: dict[str, Any] = dict(
        database_url=database_url,
        heartbeat_interval=1.0,
        resync_interval=2.0,
        status_throttle=5.0,
        kube_connection=kopf.ConnectionInfo(server=kube.url, insecure=True),
    )
    values.update(overrides)
    return OperatorConfig(**values)


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy, or fail with its last value at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")
        await asyncio.sleep(interval)


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((obj or {}).get("status") or {}).get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


async def kube_events(cluster: "Cluster", namespace: str = "default") -> list[dict[str, Any]]:
    """The Kubernetes Events of a namespace (`kubectl get events`)."""
    listing = await cluster.client.get(f"/api/v1/namespaces/{namespace}/events")
    return listing.get("items", [])


def about(events: list[dict[str, Any]], name: str, reason: str | None = None) -> list[dict[str, Any]]:
    """The events about object `name` (with `reason`)."""
    return [e for e in events if e["involvedObject"]["name"] == name and reason in (None, e.get("reason"))]


class Cluster:
    """The test's view of the management cluster: a kubectl-like client in the test's loop."""

    def __init__(self, client: KubeClient):
        self.client = client

    async def create(self, resource: ApiResource, body: dict[str, Any]) -> dict[str, Any]:
        ns = body["metadata"].get("namespace", "default")
        body = {"apiVersion": resource.group_version, "kind": resource.kind, **body}
        body["metadata"] = {**body["metadata"], "namespace": ns}
        return await self.client.request("POST", resource.path(ns), body)

    async def get(self, resource: ApiResource, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return await self.client.get_or_none(resource.path(namespace, name))

    async def patch(self, resource: ApiResource, name: str, body: dict[str, Any], namespace: str = "default") -> Any:
        return await self.client.merge_patch(resource.path(namespace, name), body)

    async def delete(self, resource: ApiResource, name: str, namespace: str = "default") -> bool:
        return await self.client.delete(resource.path(namespace, name))

    async def wait_condition(
        self, resource: ApiResource, name: str, kind: str, status: str, reason: str | None = None,
        namespace: str = "default", timeout: float = 15.0,
    ) -> dict[str, Any]:
        """Wait until the object has condition `kind` with `status` (and `reason`) for its current generation."""

        async def check() -> dict[str, Any] | None:
            obj = await self.get(resource, name, namespace)
            cond = condition(obj, kind)
            if cond is None or cond["status"] != status or (reason and cond["reason"] != reason):
                return None
            if obj["status"].get("observedGeneration") != obj["metadata"].get("generation"):
                return None
            return obj

        return await eventually(check, timeout)

    async def wait_targeted(self, stack: str, total: int, namespace: str = "default",
                            timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the Stack counts `total` targets: their rows exist, so agents may report on it. (Ready says
        its version is stored; binding AgentTargets to agents is a separate step.)"""

        async def check() -> dict[str, Any] | None:
            obj = await self.get(STACKS, stack, namespace)
            targets = ((obj or {}).get("status") or {}).get("targets") or {}
            return obj if targets.get("total") == total else None

        return await eventually(check, timeout)

    async def wait_gone(self, resource: ApiResource, name: str, namespace: str = "default", timeout: float = 15.0) -> None:
        async def check() -> bool:
            return await self.get(resource, name, namespace) is None

        await eventually(check, timeout)
