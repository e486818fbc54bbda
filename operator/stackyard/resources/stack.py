"""The Stack CRD: a bundle of Kubernetes objects shipped to the agents its AgentTargets select."""

from __future__ import annotations

from .schema import (
    DNS_LABEL,
    age_column,
    agent_entry,
    any_value,
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

SPEC = obj("Desired state: the objects to ship and what to record with them.", {
    "description": string("Free text recorded with the stack.", maxLength=4096, default=""),
    "labels": array('Free-form labels recorded with the stack (for example "tier=web").',
                    string(minLength=1, maxLength=255), maxItems=64, default=[], list_type="set"),
    "annotations": obj("Key/value annotations recorded with the stack.", maxProperties=64, default={},
                       additionalProperties=string(maxLength=4096)),
    "resources": array("The Kubernetes objects of this stack, applied by each targeted agent with server-side apply.",
                       obj(None, required=["apiVersion", "kind", "metadata"], embedded=True, preserve_unknown=True,
                           validations=[rule("has(self.metadata.name)", "every resource needs metadata.name",
                                             "FieldValueRequired")]),
                       maxItems=500, default=[]),
    "secretRefs": array(
        "Secrets of this namespace to ship, by reference: the operator reads each (it must carry the label"
        " stackyard.dev/stack-secret=true), ships its type and data as a Secret named targetName in targetNamespace,"
        " encrypted at rest, and emits a new version when it changes. Prefer this to a Secret in resources, whose"
        " data anyone who may get this Stack can read.",
        obj(None, {
            "name": name("A Secret in the Stack's own namespace."),
            "targetNamespace": string("Namespace of the Secret in the target cluster.", minLength=1, maxLength=63,
                                      pattern=DNS_LABEL),
            "targetName": name("Name of the Secret in the target cluster; default: name."),
        }, required=["name", "targetNamespace"]),
        maxItems=64, default=[]),
    "overlays": array(
        "Per-cluster customization: for each agent, every overlay whose agentSelector matches the Agent's"
        " metadata.labels applies, in order. A patch is a JSON merge patch (RFC 7386) of the one resource its"
        " target names; its string values may use {{cluster.name}}, {{agent.name}} and {{agent.labels.KEY}}"
        " ({{{{ for a literal {{).",
        obj(None, {
            "agentSelector": label_selector("Agents this overlay applies to; {} selects every agent."),
            "patches": array("Merge patches, each of one resource of this Stack.", obj(None, {
                "target": obj("The resource to patch.", {
                    "apiVersion": string("Only a resource of this apiVersion (default: any).", maxLength=253),
                    "kind": string("Kind of the resource.", minLength=1, maxLength=63),
                    "name": name("Name of the resource."),
                    "namespace": string("Only a resource of this namespace (default: any).", maxLength=63),
                }, required=["kind", "name"]),
                "patch": obj("JSON merge patch: objects merge, null deletes, anything else (lists too) replaces."
                             " It may not change apiVersion, kind, metadata.name or metadata.namespace.",
                             preserve_unknown=True),
            }, required=["target", "patch"]), minItems=1, maxItems=32),
        }, required=["agentSelector", "patches"]),
        maxItems=32, default=[]),
    "rollout": obj("Staged rollout of each new version across the targeted agents. Without it (or with"
                   " maxUnavailable 100% and no pause) every agent gets a new version at once.", {
                       "maxUnavailable": any_value(
                           "How many agents may run the new version without reporting it healthy yet, as a number"
                           " (>= 1) or a percentage of the targeted agents (rounded down, at least 1). Default 100%.",
                           int_or_string=True),
                       "pause": boolean("Release the new version to no more agents until this is false again."),
                   }),
})

STATUS = obj("Observed state, written by the operator only.", {
    "observedGeneration": observed_generation(),
    "stackId": string("Id of the stack in stackyard's database (the Stack's metadata.uid)."),
    "conditions": conditions("Ready, Reconciling, Stalled; also Healthy (every targeted agent reports the latest"
                             " version healthy) and RolloutHalted"),
    "deploymentObject": obj("The latest immutable deployment object emitted for this Stack.", {
        "id": string("Id of the deployment object."),
        "sequenceId": sequence("Global, increasing sequence number of the deployment object."),
        "checksum": string("sha256 of the rendered YAML."),
        "submittedAt": timestamp("When the deployment object was stored."),
        "resourceCount": integer("Number of objects in it."),
    }),
    "targets": obj("Counts over every targeted agent.", {
        "total": integer("Targeted agents."),
        "applied": integer("Agents that applied the latest version."),
        "failed": integer("Agents whose apply of the latest version failed."),
        "pending": integer("Agents that have not applied the latest version yet (or are deleting)."),
        "healthy": integer("Agents that report the latest version healthy."),
        "progressing": integer("Agents that report the latest version progressing (not healthy yet)."),
        "degraded": integer("Agents that report the latest version degraded, or failed to apply it."),
    }),
    "rollout": obj("Where the staged rollout of the latest version stands (present with spec.rollout).", {
        "sequenceId": sequence("The version being rolled out."),
        "released": integer("Agents it was released to."),
        "healthy": integer("Agents that report it healthy."),
        "total": integer("Targeted agents."),
        "maxUnavailable": integer("spec.rollout.maxUnavailable as a number of agents."),
        "paused": boolean("spec.rollout.pause."),
    }, nullable=True),
    "agents": array("Per targeted agent (bounded; the counts in targets cover all).", agent_entry(), maxItems=100),
    "kopf": kopf_state(),
})

CRD = crd("Stack", "stacks", "stk",
          "A bundle of Kubernetes objects that stackyard ships to the agents targeted by AgentTargets.",
          SPEC, STATUS, [
              ready_column(),
              column("Sequence", "integer", ".status.deploymentObject.sequenceId"),
              column("Applied", "integer", ".status.targets.applied"),
              column("Failed", "integer", ".status.targets.failed"),
              column("Healthy", "integer", ".status.targets.healthy"),
              column("Targets", "integer", ".status.targets.total"),
              column("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
              age_column(),
          ])
