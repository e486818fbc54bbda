"""The rollout decision, pure: what a policy, the latest version and the targets' reports release."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from stackyard.controller.render import InvalidSpec
from stackyard.controller.rollout import budget, decide, parse_rollout, view
from stackyard.store import DeploymentObject, TargetRow

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)
LATEST = DeploymentObject(uuid.uuid4(), uuid.uuid4(), 9, "0" * 64, NOW, False, "")


def target(agent: str, released: int | None, health: str | None = None, on: int = 9) -> TargetRow:
    details = {"health": health, "unhealthy": [{"object": "x", "message": "boom"}]} if health else None
    return TargetRow(uuid.uuid4(), agent, "eu-1", uuid.uuid4(), "ACTIVE", NOW, None, None, None, None,
                     released_sequence=released, health_details=details, health_sequence_id=on if health else None)


def test_policies_parse_and_the_default_means_no_staging():
    assert parse_rollout({}) is None
    assert parse_rollout({"rollout": {"maxUnavailable": "100%"}}) is None
    assert parse_rollout({"rollout": {"maxUnavailable": 2}}) == {"maxUnavailable": 2, "pause": False}
    assert parse_rollout({"rollout": {"pause": True}}) == {"maxUnavailable": "100%", "pause": True}
    for bad in ({"maxUnavailable": 0}, {"maxUnavailable": "0%"}, {"maxUnavailable": "101%"}, {"maxUnavailable": "2"},
                {"maxUnavailable": True}, {"pause": "yes"}, {"surge": 1}, "fast"):
        with pytest.raises(InvalidSpec) as refused:
            parse_rollout({"rollout": bad})
        assert refused.value.reason == "InvalidRollout"


def test_a_percentage_rounds_down_but_releases_at_least_one():
    assert budget({"maxUnavailable": "25%"}, 10) == 2
    assert budget({"maxUnavailable": "10%"}, 5) == 1
    assert budget({"maxUnavailable": 3}, 10) == 3


def test_release_only_as_many_as_are_not_healthy_yet():
    policy = {"maxUnavailable": 2, "pause": False}
    rows = [target("a", 9, "Healthy"), target("b", 9, "Progressing"), target("c", 8), target("d", 8), target("e", 0)]
    assert decide(policy, LATEST, rows) == [("c", "eu-1")], "one slot left: b is not healthy yet"
    rows[1] = target("b", 9, "Healthy")
    assert decide(policy, LATEST, rows) == [("c", "eu-1"), ("d", "eu-1")]
    assert decide(policy, LATEST, [target("a", None), target("b", 8)]) == [("b", "eu-1")], \
        "a target that follows the latest counts as released (unavailable until healthy)"
    stale = target("a", 9, "Healthy", on=8)
    assert view(policy, LATEST, [stale, target("b", 8)]).healthy == 0, "health of an older version does not count"


def test_a_degraded_agent_halts_and_pause_holds():
    policy = {"maxUnavailable": 3, "pause": False}
    rows = [target("a", 9, "Degraded"), target("b", 8), target("c", 8)]
    current = view(policy, LATEST, rows)
    assert current.halted_by is rows[0] and decide(policy, LATEST, rows) == []
    assert decide({**policy, "pause": True}, LATEST, [target("b", 8)]) == []
    assert decide(None, LATEST, rows) == [], "no policy: nothing to release, every target follows the latest"
    marker = DeploymentObject(uuid.uuid4(), uuid.uuid4(), 10, "0" * 64, NOW, True, "")
    assert view(policy, marker, rows) is None, "a deletion reaches every agent at once"
