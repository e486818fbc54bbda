"""The AgentTarget CRD: which Stack goes to which agents (one named agent, or a label selector over Agents)."""

from __future__ import annotations

from .schema import (
    HEALTHS,
    TARGET_STATES,
    age_column,
    agent_entry,
    array,
    boolean,
    column,
    conditions,
    crd,
    integer,
    kopf_state,
    label_selector,
    last_drift,
    name,
    obj,
    observed_generation,
    ready_column,
    rule,
    sequence,
    string,
    timestamp,
)

SPEC = obj("Which Stack goes to which agent.", {
    "stackRef": obj("The Stack to ship, in the same namespace.", {"name": name("Name of the Stack.")},
                    required=["name"]),
    "agentName": name("Name of the agent (the Agent's spec.agentName, else its metadata.name); with clusterName,"
                      " the alternative to agentSelector."),
    "clusterName": name("Cluster the agent runs in (the Agent's spec.clusterName)."),
    "agentSelector": label_selector("Agents, by their metadata.labels, to ship the Stack to: every Agent of this"
                                    " namespace, or granting it, that matches. The alternative to agentName and"
                                    " clusterName."),
}, required=["stackRef"], validations=[
    rule("has(self.agentSelector) != (has(self.agentName) || has(self.clusterName))",
         "give either agentName and clusterName, or agentSelector"),
    rule("has(self.agentSelector) || (has(self.agentName) && has(self.clusterName))",
         "agentName and clusterName go together"),
])

STATUS = obj("Observed state, written by the operator only.", {
    "observedGeneration": observed_generation(),
    "targetId": string("Id of the target row in stackyard's database; absent while the Stack does not exist."),
    "stackId": string("Id (metadata.uid) of the Stack currently targeted; absent while it does not exist."),
    "conditions": conditions("Ready, Reconciling, Stalled"),
    "agent": obj("What stackyard knows of the targeted agent (nothing, if it does not accept this namespace).", {
        "registered": boolean("True when an Agent with this name and cluster is registered and accepts this"
                              " namespace."),
        "status": string("The status the agent last reported with its heartbeat."),
        "lastHeartbeat": timestamp("Time of the agent's last heartbeat."),
    }),
    "deployment": obj("Where the agent stands with the Stack's latest deployment object.", {
        "sequenceId": sequence("Sequence of the deployment object the state refers to."),
        "state": string("Pending, Applied, Failed or Deleting.", enum=TARGET_STATES),
        "message": string("The agent's last message about this stack."),
        "lastEventTime": timestamp("When the agent last reported on this stack."),
        "healthMessage": string("The first unhealthy object and why."),
        "lastDrift": last_drift(),
    }),
    "health": string("Health of the Stack on the bound agents (kstatus rules over its objects): Healthy,"
                     " Progressing, Degraded (any agent), or Unknown until reported.", nullable=True, enum=HEALTHS),
    "unhealthy": array("The first unhealthy objects the named agent reports, with their kstatus status.", obj(None, {
        "object": string("apiVersion/kind/namespace/name of the object."),
        "status": string("InProgress, Failed, Terminating or NotFound."),
        "message": string("Why."),
    }), nullable=True, maxItems=5),
    "selectedAgents": integer("How many agents the AgentTarget binds (1 for a named agent)."),
    "agents": array("Per selected agent (selector form; bounded, failures first).", agent_entry(), maxItems=100),
    "kopf": kopf_state(),
})

CRD = crd("AgentTarget", "agenttargets", "at",
          "Ships one Stack (same namespace) to one named agent, or to every permitted Agent a label selector picks.",
          SPEC, STATUS, [
              column("Stack", "string", ".spec.stackRef.name"),
              column("Agent", "string", ".spec.agentName"),
              column("Cluster", "string", ".spec.clusterName"),
              column("Selected", "integer", ".status.selectedAgents"),
              column("State", "string", ".status.deployment.state"),
              column("Health", "string", ".status.health"),
              ready_column(),
              age_column(),
          ])
