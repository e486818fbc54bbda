"""Drift of an applied object: pure rules over the desired body and the live object."""

from __future__ import annotations

from stackyard.agent.drift import drift

DESIRED = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1", "y": "2"}}


def live(data: dict, managers: list[tuple[str, str]]) -> dict:
    entries = [{"manager": m, "operation": op, "time": "2026-12-02T10:00:0%dZ" % i} for i, (m, op) in enumerate(managers)]
    return {**DESIRED, "data": data, "metadata": {"name": "a", "managedFields": entries}}


def test_a_value_changed_by_another_writer_is_drift_and_by_nobody_is_normalization():
    assert drift(DESIRED, live({"x": "9", "y": "2"}, [("stackyard-agent", "Apply"), ("kubectl-edit", "Update")]),
                 "stackyard-agent") == {"fields": ["data.x"], "managers": ["kubectl-edit"]}
    assert drift(DESIRED, live({"x": "9", "y": "2"}, [("stackyard-agent", "Apply")]), "stackyard-agent") is None


def test_a_removed_field_or_a_deleted_object_is_drift_though_nobody_is_recorded():
    # a removal leaves no managedFields entry on a real API server: the field is simply gone
    removed = drift(DESIRED, live({"y": "2"}, [("stackyard-agent", "Apply")]), "stackyard-agent")
    assert removed == {"fields": ["data.x"], "managers": []}
    assert drift(DESIRED, None, "stackyard-agent") == {"fields": ["(deleted)"], "managers": []}
    assert drift(DESIRED, live({"x": "1", "y": "2", "z": "extra"}, [("stackyard-agent", "Apply")]),
                 "stackyard-agent") is None, "what the agent does not set is not its business"
