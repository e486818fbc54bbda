"""The whole loop in one test: management cluster + operator + API + PostgreSQL, and an agent on a target cluster.

Both clusters are kmock emulators (no Kubernetes can run here); everything
else is real: PostgreSQL, HTTP, the Kopf operator, the agent's code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from stackyard.agent.broker import BrokerClient
from stackyard.agent.loop import AgentSettings, StackAgent
from stackyard.agent.main import key_reader
from stackyard.kube import Kube, url_configuration
from stackyard.metrics import AgentMetrics
from stackyard.tls import ReloadingContext

from .api_harness import RunningApi
from .emulator import KubeServer
from .kubectl import SECRETS, ApiResource, KubeClient
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, Cluster, condition, eventually

CONFIGMAPS = ApiResource("v1", "ConfigMap", "configmaps", True)
NAMESPACES = ApiResource("v1", "Namespace", "namespaces", False)


def configmap(name: str, data: dict | None = None, namespace: str = "apps") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
            "data": data or {"k": "v"}}


def agent_settings(**overrides: Any) -> AgentSettings:
    values = dict(namespace="stackyard-system", heartbeat_interval=1.0, poll_wait=10, resync_interval=300.0,
                  retry_base=0.2, retry_max=1.0, crd_timeout=5.0, deletion_grace=0.5)
    values.update(overrides)
    return AgentSettings(**values)


@dataclass
class RunningAgent:
    agent: StackAgent
    task: asyncio.Task
    kube: Kube
    broker: BrokerClient

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.broker.close()
        await self.kube.close()


async def start_agent(api_url: str, pak_file: Path, target: KubeServer, kube: Kube | None = None,
                      tls: ReloadingContext | None = None, **settings: Any) -> RunningAgent:
    kube = kube or Kube(url_configuration(target.url), user_agent="stackyard-agent")
    broker = BrokerClient(api_url, key_reader(pak_file), tls=tls)
    agent = StackAgent(broker, kube, agent_settings(**settings), AgentMetrics())
    return RunningAgent(agent, asyncio.create_task(agent.run()), kube, broker)


async def write_pak(cluster: Cluster, agent_name: str, path: Path) -> str:
    async def token() -> str | None:
        secret = await cluster.client.get_or_none(SECRETS.path("default", f"{agent_name}-pak"))
        return base64.b64decode(secret["data"]["pak"]).decode() if secret else None

    value = await eventually(token)
    path.write_text(value)
    return value


class Target:
    """The test's view of the target cluster."""

    def __init__(self, client: KubeClient):
        self.client = client

    async def configmaps(self, namespace: str = "apps") -> dict[str, dict]:
        listing = await self.client.get(CONFIGMAPS.path(namespace))
        return {item["metadata"]["name"]: item for item in listing["items"]}


def agent_entry(stack: dict | None, agent: str = "edge", cluster: str = "eu-1") -> dict | None:
    for entry in ((stack or {}).get("status") or {}).get("agents") or []:
        if entry["agentName"] == agent and entry["clusterName"] == cluster:
            return entry
    return None


async def wait_applied(cluster: Cluster, name: str, timeout: float = 15.0) -> dict:
    """Until the Stack's status shows the agent Applied at the Stack's current sequence."""

    async def check():
        obj = await cluster.get(STACKS, name)
        entry = agent_entry(obj)
        status = (obj or {}).get("status") or {}
        current = status.get("deploymentObject", {}).get("sequenceId")
        ready = condition(obj, "Ready")
        observed = status.get("observedGeneration") == (obj or {}).get("metadata", {}).get("generation") and (
            ready is not None and ready["status"] == "True"
        )
        if observed and entry and entry["state"] == "Applied" and entry.get("sequenceId") == current:
            return obj
        return None

    return await eventually(check, timeout)


async def setup_loop(cluster: Cluster, stack_resources: list, tmp_path: Path, **stack_spec: Any) -> Path:
    """An Agent, a Stack (its resources, and `stack_spec` besides) and an AgentTarget in the management cluster;
    returns the PAK file."""
    await cluster.create(AGENTS, {"metadata": {"name": "edge"}, "spec": {"clusterName": "eu-1"}})
    await cluster.create(STACKS, {"metadata": {"name": "web"}, "spec": {"resources": stack_resources, **stack_spec}})
    await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-edge"},
                                         "spec": {"stackRef": {"name": "web"}, "agentName": "edge", "clusterName": "eu-1"}})
    pak_file = tmp_path / "pak"
    await write_pak(cluster, "edge", pak_file)
    return pak_file


@contextlib.asynccontextmanager
async def target_cluster() -> AsyncIterator[tuple[KubeServer, Target]]:
    server = KubeServer(crds=False).start()
    client = KubeClient(kopf.ConnectionInfo(server=server.url, insecure=True))
    try:
        yield server, Target(client)
    finally:
        await client.close()
        server.stop()


__all__ = ["RunningApi", "start_agent", "setup_loop", "target_cluster", "wait_applied", "configmap", "agent_entry",
           "NAMESPACES", "CONFIGMAPS", "Target"]
