"""The operator's fleet gauges: constant-time totals over Stacks, and agents by phase and heartbeat age."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from stackyard.metrics import HEARTBEAT_AGES, Metrics, heartbeat_age

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def status(failed=0, degraded=0, healthy=0, applied=0, pending=0, total=0, halted=False, rollout=None) -> dict:
    conditions = [{"type": "RolloutHalted", "status": "True" if halted else "False"}]
    found = {"targets": {"total": total, "failed": failed, "degraded": degraded, "healthy": healthy,
                         "applied": applied, "pending": pending}, "conditions": conditions}
    if rollout is not None:
        found["rollout"] = {"healthy": rollout[0], "total": rollout[1]}
    return found


def test_stack_gauges_move_with_each_stack_and_forget_it():
    metrics = Metrics()
    metrics.observe_stack("a", status(failed=1, applied=2, healthy=2, total=3))
    metrics.observe_stack("b", status(degraded=1, applied=1, total=1, halted=True, rollout=(0, 1)))
    metrics.observe_stack("c", status(healthy=4, applied=4, total=4, rollout=(4, 4)))
    metrics.observe_stack("d", status(healthy=1, applied=2, pending=2, total=4, rollout=(1, 4)))
    assert value(metrics, "stackyard_stacks_failing") == 2
    assert value(metrics, "stackyard_stack_target_states", state="Applied") == 9
    assert value(metrics, "stackyard_stack_target_states", state="Failed") == 1
    assert value(metrics, "stackyard_rollouts_in_progress") == 1, "d only: b is halted, c is done"
    assert value(metrics, "stackyard_stack_targets", health="Unknown") == 4  # a: the failed one; d: three
    assert value(metrics, "stackyard_rollout_halted") == 1

    metrics.observe_stack("a", status(applied=3, healthy=3, total=3))  # fixed
    metrics.forget_stack("b")  # deleted
    metrics.observe_stack("d", status(healthy=4, applied=4, total=4, rollout=(4, 4)))  # done
    assert value(metrics, "stackyard_stacks_failing") == 0
    assert value(metrics, "stackyard_rollouts_in_progress") == 0
    assert value(metrics, "stackyard_stack_target_states", state="Applied") == 11
    assert value(metrics, "stackyard_stack_target_states", state="Failed") == 0
    assert value(metrics, "stackyard_rollout_halted") == 0
    assert value(metrics, "stackyard_stack_targets", health="Healthy") == 11


def test_heartbeat_ages_fall_in_bounded_classes():
    ages = [heartbeat_age(None, NOW)] + [heartbeat_age(NOW - timedelta(seconds=s), NOW)
                                        for s in (0, 59, 60, 299, 300, 3599, 3600, 86400 * 30)]
    assert ages == ["never", "under_1m", "under_1m", "1m_to_5m", "1m_to_5m", "5m_to_1h", "5m_to_1h", "over_1h",
                    "over_1h"]
    assert set(ages) == set(HEARTBEAT_AGES)


def test_agent_gauges_set_every_class_and_zero_the_ones_gone():
    metrics = Metrics()
    metrics.observe_agents(["Active", "Active", "Stale"], ["under_1m", "under_1m", "over_1h"])
    assert value(metrics, "stackyard_agents", phase="Active") == 2
    assert value(metrics, "stackyard_agents_by_heartbeat_age", age="over_1h") == 1
    assert value(metrics, "stackyard_agents_by_heartbeat_age", age="never") == 0
    metrics.observe_agents(["Active"], ["under_1m"])
    assert value(metrics, "stackyard_agents", phase="Stale") == 0
    assert value(metrics, "stackyard_agents_by_heartbeat_age", age="over_1h") == 0
