"""The Agent CRD: an agent in a target cluster, its grants, and the key the operator issues it."""

from __future__ import annotations

from .schema import (
    AGENT_PHASES,
    DNS_LABEL,
    age_column,
    array,
    boolean,
    column,
    conditions,
    crd,
    integer,
    kopf_state,
    label_selector,
    name,
    obj,
    observed_generation,
    ready_column,
    rule,
    sequence,
    string,
    timestamp,
)

SPEC = obj("Desired state of the agent registration.", {
    "clusterName": name("Name of the target cluster the agent runs in (immutable)."),
    "agentName": name("Name the agent is targeted by; defaults to metadata.name."),
    "labels": array("Free-form labels recorded with the agent and returned by GET /api/v1/agents/self.",
                    string(minLength=1, maxLength=255), maxItems=64, default=[], list_type="set"),
    "annotations": obj("Key/value annotations recorded with the agent and returned by GET /api/v1/agents/self.",
                       maxProperties=64, default={}, additionalProperties=string(maxLength=4096)),
    "allowedNamespaces": array("Namespaces besides the Agent's own whose AgentTargets may ship stacks to this agent"
                               " (a grant, as Gateway API's ReferenceGrant). Empty: only the Agent's own namespace.",
                               string(minLength=1, maxLength=63, pattern=DNS_LABEL), maxItems=256, default=[],
                               list_type="set"),
    "allowedNamespaceSelector": label_selector(
        "Namespaces, by their labels, whose AgentTargets may ship stacks to this agent (besides allowedNamespaces)."
        " A standard label selector; re-evaluated when the Agent is reconciled and at every resync.", "a namespace"),
    "impersonate": array(
        "Least privilege in the target cluster: the agent applies, prunes and deletes the objects of a Stack from"
        " management namespace N as the service account of the first entry that matches N (by name or by the"
        " namespace's labels), impersonating it. No match: as the agent itself, unless impersonationRequired.",
        obj(None, {
            "namespaces": array("Management namespaces this entry maps.",
                                string(minLength=1, maxLength=63, pattern=DNS_LABEL), maxItems=256, list_type="set"),
            "namespaceSelector": label_selector("Management namespaces, by their labels, this entry maps"
                                                " (re-evaluated at every reconcile and resync).", "a namespace"),
            "serviceAccount": obj("The service account in the target cluster to act as.", {
                "namespace": string("Its namespace in the target cluster.", minLength=1, maxLength=63,
                                    pattern=DNS_LABEL),
                "name": name("Its name."),
            }, required=["namespace", "name"]),
        }, required=["serviceAccount"], validations=[rule(
            "has(self.namespaces) || has(self.namespaceSelector)",
            "give namespaces, a namespaceSelector, or both")]),
        maxItems=64, default=[]),
    "impersonationRequired": boolean(
        "Apply nothing from a namespace no impersonate entry matches (the Stack's agent entry says why), so the"
        " agent's own ClusterRole can drop escalate, bind and the wildcard.", default=False),
}, required=["clusterName"], validations=[rule("self.clusterName == oldSelf.clusterName", "clusterName is immutable")])

STATUS = obj("Observed state, written by the operator only.", {
    "observedGeneration": observed_generation(),
    "agentId": string("Id of the agent in stackyard's database (the Agent's metadata.uid)."),
    "phase": string("Pending until the first heartbeat, Active while heartbeats arrive, Stale after 3 missed"
                    " intervals.", enum=AGENT_PHASES),
    "lastHeartbeat": timestamp("Time of the last heartbeat (refreshed at a coarse throttle, not on every heartbeat)."),
    "heldStacks": integer("Stacks the agent holds in its cluster (an inventory each), as its last heartbeat said."
                          " A deleted Agent waits for 0 before its key is revoked."),
    "lastEvent": obj("The newest event the agent reported.", {
        "time": timestamp("When the event was recorded."),
        "type": string("Event type, for example APPLY or DELETE."),
        "status": string("SUCCESS or FAILURE."),
        "message": string("The agent's message (truncated)."),
        "sequenceId": sequence("Sequence of the deployment object the event is about."),
    }),
    "pakSecretName": string("The Secret (same namespace) holding the agent's API key under data key pak."),
    "pakKeyId": string("public id of the key in the Secret (sy_<id>_...)"),
    "pakRotation": string("Value of the stackyard.dev/rotate-pak annotation the current key was issued for."),
    "conditions": conditions("Ready, Reconciling, Stalled"),
    "kopf": kopf_state(),
})

CRD = crd("Agent", "agents", "sya",
          "An agent in a target cluster; the operator issues its API key into the Secret <name>-pak.",
          SPEC, STATUS, [
              column("Cluster", "string", ".spec.clusterName"),
              column("Phase", "string", ".status.phase"),
              column("Last Heartbeat", "date", ".status.lastHeartbeat"),
              ready_column(priority=1),
              age_column(),
          ], validations=[
              rule("(has(self.spec.agentName) ? self.spec.agentName : self.metadata.name) =="
                   " (has(oldSelf.spec.agentName) ? oldSelf.spec.agentName : oldSelf.metadata.name)",
                   "the effective agent name (spec.agentName, else metadata.name) is immutable once the Agent exists"),
              rule("size(self.metadata.name) <= 249",
                   "metadata.name must be at most 249 characters: the Secret <name>-pak holds the agent's key"),
          ])
