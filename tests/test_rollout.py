"""Staged rollout across 10 agents: the real operator, API and PostgreSQL. The agents are simulated through
the agent API itself (BrokerClient, as `stackyard agent` uses it): they fetch their target state and report
APPLY and HEALTH events; no target cluster is needed to say which version each one got."""

from __future__ import annotations


from stackyard.agent.broker import BrokerClient
from stackyard.protocol import Event, stacks_of

from .builders import configmap
from .loop_harness import write_pak
from .operator_harness import AGENT_TARGETS, AGENTS, STACKS, condition, eventually

NAMES = [f"edge-{i}" for i in range(10)]


class SimulatedAgent:
    def __init__(self, name: str, api_url: str, pak: str):
        self.name = name
        self.broker = BrokerClient(api_url, lambda: pak)

    async def version(self) -> int | None:
        """The sequence of stack `web` in this agent's target state (None: not released to it)."""
        answer = await self.broker.target_state(None, 0)
        stacks = [s for s in stacks_of(answer.document) if s.stack_name == "default/web"]
        return stacks[0].sequence_id if stacks else None

    async def report(self, health: str) -> None:
        answer = await self.broker.target_state(None, 0)
        (stack,) = [s for s in stacks_of(answer.document) if s.stack_name == "default/web"]
        unhealthy = [] if health == "Healthy" else [
            {"object": "apps/v1/Deployment apps/web", "status": "Failed", "message": "Progress deadline exceeded"}]
        await self.broker.post_events([
            Event(stack.deployment_object_id, "APPLY", "SUCCESS", "applied 1 objects"),
            Event(stack.deployment_object_id, "HEALTH", "SUCCESS" if health == "Healthy" else "FAILURE", health,
                  {"health": health, "counts": {}, "unhealthy": unhealthy})])


async def versions(agents: list[SimulatedAgent]) -> dict[str, int | None]:
    return {a.name: await a.version() for a in agents}


async def test_a_new_version_reaches_agents_only_as_fast_as_they_report_it_healthy(operator_api, operator, cluster, tmp_path):
    for name in NAMES:
        await cluster.create(AGENTS, {"metadata": {"name": name, "labels": {"fleet": "eu"}},
                                      "spec": {"clusterName": "eu-1"}})
    agents = [SimulatedAgent(n, operator_api.url, await write_pak(cluster, n, tmp_path / n)) for n in NAMES]
    try:
        await cluster.create(STACKS, {"metadata": {"name": "web"},
                                      "spec": {"resources": [configmap("a", {"v": "1"})],
                                               "rollout": {"maxUnavailable": 2}}})
        await cluster.create(AGENT_TARGETS, {"metadata": {"name": "web-eu"}, "spec": {
            "stackRef": {"name": "web"}, "agentSelector": {"matchLabels": {"fleet": "eu"}}}})

        async def released(sequence: int | None, count: int):
            seen = await versions(agents)
            on = sorted(n for n, v in seen.items() if v is not None and (sequence is None or v == sequence))
            return on if len(on) == count else None

        first = await eventually(lambda: released(None, 2))
        assert first == ["edge-0", "edge-1"], "a new Stack's first version is staged too"
        v1 = await agents[0].version()
        for step in range(0, 10, 2):  # each pair reports healthy; the next pair is released
            for agent in agents[step:step + 2]:
                await agent.report("Healthy")
            await eventually(lambda: released(v1, min(10, step + 4)))
        await eventually(lambda: _stack_healthy(cluster))

        await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": "2"})]}})
        await eventually(lambda: released_newer(agents, v1, ["edge-0", "edge-1"]))
        v2 = await agents[0].version()
        assert {v for n, v in (await versions(agents)).items() if n not in ("edge-0", "edge-1")} == {v1}, \
            "the others keep the version they run"

        await agents[0].report("Degraded")
        await agents[1].report("Healthy")
        halted = await eventually(lambda: _rollout(cluster, halted=True, healthy=1))
        assert condition(halted, "RolloutHalted")["reason"] == "AgentDegraded"
        assert "edge-0" in condition(halted, "RolloutHalted")["message"]
        assert halted["status"]["rollout"]["released"] == 2
        assert await released(v2, 2), "a Degraded agent halts the rollout"
        await eventually(lambda: _metric(operator, "stackyard_rollout_halted", 1.0))
        await eventually(lambda: _metric(operator, "stackyard_stack_targets", 1.0, {"health": "Degraded"}))
        await eventually(lambda: _metric(operator, "stackyard_stacks_failing", 1.0))

        await agents[0].report("Healthy")  # it recovers: the rollout goes on
        await eventually(lambda: released(v2, 4))

        await cluster.patch(STACKS, "web", {"spec": {"rollout": {"maxUnavailable": 2, "pause": True}}})
        paused = await eventually(lambda: _rollout(cluster, halted=True, healthy=2))
        assert condition(paused, "RolloutHalted")["reason"] == "Paused"
        for agent in agents[2:4]:
            await agent.report("Healthy")
        await eventually(lambda: _rollout(cluster, halted=True, healthy=4))
        assert await released(v2, 4), "pause holds the rollout"

        operator.stop()  # the release state is in the database: a new operator continues where this one was
        operator.start()
        await cluster.patch(STACKS, "web", {"spec": {"rollout": {"maxUnavailable": 2, "pause": False}}})
        await eventually(lambda: released(v2, 6))
        for step in range(4, 10, 2):
            for agent in agents[step:step + 2]:
                await agent.report("Healthy")
            await eventually(lambda: released(v2, min(10, step + 4)))
        done = await eventually(lambda: _stack_healthy(cluster))
        assert condition(done, "RolloutHalted")["status"] == "False" and condition(done, "RolloutHalted")["reason"] == "Released"
        assert done["status"]["targets"]["healthy"] == 10
        await eventually(lambda: _metric(operator, "stackyard_stack_targets", 10.0, {"health": "Healthy"}))
        await eventually(lambda: _metric(operator, "stackyard_rollout_halted", 0.0))
        await eventually(lambda: _metric(operator, "stackyard_stacks_failing", 0.0))
        await eventually(lambda: _metric(operator, "stackyard_stack_target_states", 10.0, {"state": "Applied"}))
    finally:
        for agent in agents:
            await agent.broker.close()


async def released_newer(agents, old: int, expected: list[str]):
    seen = await versions(agents)
    newer = sorted(n for n, v in seen.items() if v is not None and v > old)
    return newer == expected


async def _stack_healthy(cluster):
    obj = await cluster.get(STACKS, "web")
    healthy = condition(obj, "Healthy")
    return obj if healthy and healthy["status"] == "True" else None


async def _rollout(cluster, halted: bool, healthy: int):
    obj = await cluster.get(STACKS, "web")
    rollout = (obj.get("status") or {}).get("rollout") or {}
    condition_ = condition(obj, "RolloutHalted")
    if condition_ is None or (condition_["status"] == "True") != halted or rollout.get("healthy") != healthy:
        return None
    return obj


async def _metric(operator, name: str, value: float, labels: dict | None = None) -> bool:
    return operator.metrics.registry.get_sample_value(name, labels or {}) == value
