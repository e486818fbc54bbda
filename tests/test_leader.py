"""Leader election on a Lease: one holder, a standby that takes over when the holder stops renewing."""

from __future__ import annotations

import asyncio

import pytest

from stackyard.controller.leader import LeaseElector, LostLeadership
from stackyard.kube import Kube, url_configuration

from .operator_harness import eventually


@pytest.fixture
async def kube(kube_server):
    client = Kube(url_configuration(kube_server.url))
    yield client
    await client.close()


async def test_one_leader_a_standby_and_a_takeover(kube):
    first = LeaseElector(kube, "stackyard-system", "replica-a", lease_seconds=1, renew_every=0.2)
    second = LeaseElector(kube, "stackyard-system", "replica-b", lease_seconds=1, renew_every=0.2)
    assert await first.try_acquire() is True
    assert await second.try_acquire() is False, "a live lease is not taken over"
    assert await first.try_acquire() is True, "the holder renews"

    keeper = asyncio.create_task(first.keep())
    standby = asyncio.create_task(second.acquire())
    renewals = set()

    async def renewed_over_two_leases() -> bool:  # the holder renews; meanwhile the standby must keep waiting
        assert not standby.done(), "the standby took a lease that was being renewed"
        renewals.add((await kube.get(first.ref))["spec"]["renewTime"])
        return len(renewals) >= 10  # 10 renewals every 0.2 s: two lease durations

    await eventually(renewed_over_two_leases, timeout=10, interval=0.05)
    assert not standby.done()
    keeper.cancel()  # the holder dies without releasing
    await asyncio.wait_for(standby, timeout=10)
    lease = await kube.get(second.ref)
    assert lease["spec"]["holderIdentity"] == "replica-b"
    assert lease["spec"]["leaseTransitions"] == 1

    with pytest.raises(LostLeadership):
        await asyncio.wait_for(first.keep(), timeout=10)


async def test_concurrent_candidates_never_both_win(kube):
    electors = [LeaseElector(kube, "ns", f"replica-{i}", lease_seconds=30) for i in range(5)]
    results = await asyncio.gather(*(e.try_acquire() for e in electors))
    assert sum(results) == 1
