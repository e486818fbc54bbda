"""The agent's planner: every pruning rule as a unit test, no cluster, no broker."""

from __future__ import annotations

import yaml

from stackyard.agent.manifests import BadManifest, Inventory, ObjectRef
from stackyard.agent.planner import plan
from stackyard.backoff import Backoff
from stackyard.protocol import WireStack

GRACE = 10.0


def cm(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "apps"}}


def ref(name: str) -> ObjectRef:
    return ObjectRef("v1", "ConfigMap", "apps", name)


def live(stack_id: str, *names: str, do: str = "do-1", yaml_text: str | None = None) -> WireStack:
    content = yaml_text if yaml_text is not None else yaml.safe_dump_all([cm(n) for n in names])
    return WireStack(stack_id, f"ns/{stack_id}", False, do, 1, "c", False, content)


def marker(stack_id: str) -> WireStack:
    return WireStack(stack_id, f"ns/{stack_id}", True, f"marker-{stack_id}", 2, "c", True, "")


def inventory(stack_id: str, *names: str, do: str = "do-1", applied: bool = True) -> Inventory:
    return Inventory(stack_id, f"ns/{stack_id}", do, "c", applied, frozenset(ref(n) for n in names))


def decide(desired, inventories, now=100.0, dead_since=None, backoffs=None, reported=None, drift_due=False):
    dead = {} if dead_since is None else dead_since
    return plan(desired, {i.stack_id: i for i in inventories}, now, dead, backoffs or {}, reported or set(), GRACE,
                drift_due), dead


def test_fail_closed_without_an_inventory_nothing_is_deleted():
    decided, _ = decide([], [])
    assert decided.deletions == [] and decided.applies == []


def test_a_dead_stack_waits_for_the_grace_period_then_loses_what_no_live_stack_claims():
    dead: dict[str, float] = {}
    decided, _ = decide([live("b", "shared")], [inventory("a", "mine", "shared"), inventory("b", "shared")],
                        now=100.0, dead_since=dead)
    assert decided.deletions == [], "just seen dead: within the grace period"
    assert dead == {"a": 100.0}
    decided, _ = decide([live("b", "shared")], [inventory("a", "mine", "shared"), inventory("b", "shared")],
                        now=100.0 + GRACE, dead_since=dead)
    (deletion,) = decided.deletions
    assert deletion.objects == {ref("mine")}, "an object a live stack claims is never deleted for a dead one"


def test_a_stack_that_comes_back_within_the_grace_period_is_not_deleted():
    dead = {"a": 100.0}
    decided, dead = decide([live("a", "x")], [inventory("a", "x")], now=105.0, dead_since=dead)
    assert decided.deletions == [] and dead == {}


def test_a_deletion_marker_goes_with_its_deletion_and_is_reported_once_when_nothing_was_applied():
    decided, _ = decide([marker("a")], [inventory("a", "x")], dead_since={"a": 0.0})
    assert decided.deletions[0].marker == marker("a")
    decided, _ = decide([marker("b")], [])
    assert decided.nothing_to_remove == [marker("b")]
    decided, _ = decide([marker("b")], [], reported={"marker-b"})
    assert decided.nothing_to_remove == []


def test_a_new_version_prunes_what_it_drops_but_not_what_another_live_stack_claims():
    decided, _ = decide([live("a", "keep", do="do-2"), live("b", "moved")],
                        [inventory("a", "keep", "dropped", "moved"), inventory("b", "moved")])
    (apply,) = decided.applies
    assert apply.stack.stack_id == "a" and apply.prune == {ref("dropped")}


def test_applied_stacks_are_left_alone_until_drift_repair_and_failures_wait_for_their_backoff():
    applied = [live("a", "x")], [inventory("a", "x")]
    assert decide(*applied)[0].applies == []
    assert [a.stack.stack_id for a in decide(*applied, drift_due=True)[0].applies] == ["a"]
    waiting = Backoff(base=60)
    waiting.next_delay()
    assert decide([live("a", "x", do="do-2")], [inventory("a", "x")], backoffs={"do-2/c": waiting})[0].applies == []


def test_a_new_rendering_of_the_same_version_is_applied_and_starts_a_fresh_backoff():
    waiting = Backoff(base=60)
    waiting.next_delay()
    relabelled = WireStack("a", "ns/a", False, "do-1", 1, "rendered-for-us", False, yaml.safe_dump_all([cm("x")]))
    decided = decide([relabelled], [inventory("a", "x")], backoffs={"do-1/c": waiting})[0]
    assert [a.stack.checksum for a in decided.applies] == ["rendered-for-us"] and not decided.applies[0].repair


def test_a_failed_rendering_keeps_what_the_agent_applied_and_is_reported():
    failed = WireStack("a", "ns/a", False, "do-2", 2, "c", False, "", "OverlayFailed: overlay 0: ...")
    decided = decide([failed], [inventory("a", "x", "y")])[0]
    assert len(decided.applies) == 1 and isinstance(decided.applies[0].objects, BadManifest)
    assert "OverlayFailed" in str(decided.applies[0].objects)
    assert decided.applies[0].prune == frozenset() and decided.deletions == []


def test_a_bad_manifest_is_planned_as_a_failure_and_keeps_what_it_had():
    decided, _ = decide([live("a", yaml_text="kind: [unclosed\n", do="do-2"), live("b", "x")],
                        [inventory("a", "old"), inventory("b", "x", "old", do="do-0")])
    by_stack = {a.stack.stack_id: a for a in decided.applies}
    assert isinstance(by_stack["a"].objects, BadManifest) and by_stack["a"].prune == frozenset()
    assert by_stack["b"].prune == frozenset(), "what the unreadable stack had is still claimed"


def test_applies_are_ordered_by_stack_name():
    decided, _ = decide([live("b", "y"), live("a", "x")], [])
    assert [a.stack.stack_name for a in decided.applies] == ["ns/a", "ns/b"]
