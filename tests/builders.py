"""Builders of the objects tests create: one place, imported by every test module that needs them."""

from __future__ import annotations

from typing import Any


def configmap(name: str, data: dict | None = None, namespace: str | None = None) -> dict[str, Any]:
    """A ConfigMap as a Stack resource (namespace omitted: the agent's default namespace)."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data or {"k": "v"}}


def stack(name: str, resources: list, **spec: Any) -> dict[str, Any]:
    """A Stack custom resource (in the default namespace unless metadata says otherwise)."""
    return {"metadata": {"name": name}, "spec": {"resources": resources, **spec}}


def target(name: str, stack_name: str, agent: str = "edge-1", cluster: str = "eu-1") -> dict[str, Any]:
    """An AgentTarget naming one agent."""
    return {"metadata": {"name": name}, "spec": {"stackRef": {"name": stack_name}, "agentName": agent,
                                                 "clusterName": cluster}}
