"""stackyard's Kubernetes calls through the official client: expiring credentials, retries, leader election.

The API server is the kmock emulator, which here authenticates bearer tokens
and injects 429/500/403 answers the way a real server under load or with
rotating credentials would.
"""

from __future__ import annotations

import asyncio
import stat
import sys
import time
import urllib.parse
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from stackyard.controller.leader import LeaseElector
from stackyard.kube import CALL_ERRORS, ApiError, Kube, Ref, in_cluster_configuration, load_configuration, url_configuration

from .api_harness import running_api
from .loop_harness import configmap, setup_loop, start_agent, wait_applied
from .netfault import BlackholeProxy
from .operator_harness import STACKS, eventually


@pytest.fixture
async def kube(kube_server):
    client = Kube(url_configuration(kube_server.url))
    yield client
    await client.close()


async def test_the_agent_keeps_applying_across_service_account_token_rotations(
    kube_server, db_url, operator, cluster, tmp_path
):
    """The kubelet rewrites a projected token file; the old token stops working (here: the emulator refuses it)."""
    from .loop_harness import target_cluster

    async with running_api(db_url) as api, target_cluster() as (target_server, target_view):
        valid = {"token-0"}
        target_server.emulator.accept_token = lambda token: token in valid
        token_file = tmp_path / "token"
        token_file.write_text("token-0")
        pak_file = await setup_loop(cluster, [configmap("a", {"v": "0"})], tmp_path)
        in_cluster = Kube(in_cluster_configuration(target_server.url, token_file, None), user_agent="stackyard-agent")
        agent = await start_agent(api.url, pak_file, target_server, kube=in_cluster)
        try:
            await wait_applied(cluster, "web")
            for rotation in range(1, 4):
                token_file.write_text(f"token-{rotation}")
                valid.clear()
                valid.add(f"token-{rotation}")  # the old token is refused from now on
                await cluster.patch(STACKS, "web", {"spec": {"resources": [configmap("a", {"v": str(rotation)})]}})
                await wait_applied(cluster, "web")
                target_server.emulator.accept_token = None
                assert (await target_view.configmaps())["a"]["data"] == {"v": str(rotation)}
                target_server.emulator.accept_token = lambda token: token in valid
        finally:
            await agent.stop()


EXEC_PLUGIN = """#!{python}
import datetime, json, pathlib, time
calls = pathlib.Path({calls!r})
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
expiry = time.time() + 2
print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {{"token": f"exp-{{expiry}}",
                             "expirationTimestamp": datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc)
                             .strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
"""


async def test_a_kubeconfig_exec_plugin_keeps_working_across_expiries(kube_server, tmp_path):
    """An exec credential plugin (as on EKS, GKE, AKS) handing out tokens that live 2 s."""
    calls = tmp_path / "calls"
    plugin = tmp_path / "credential-plugin"
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable, calls=str(calls)))
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": kube_server.url}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                   "command": str(plugin), "interactiveMode": "Never"}}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    kube_server.emulator.accept_token = lambda token: token.startswith("exp-") and float(token[4:]) > time.time()
    client = Kube(load_configuration(str(kubeconfig)))
    try:
        started = time.monotonic()
        while time.monotonic() - started < 5.0:  # two and a half token lifetimes
            assert await client.list("v1", "ConfigMap", "default") == []
            await asyncio.sleep(0.25)
    finally:
        await client.close()
    assert len(calls.read_text()) >= 3, "the plugin was asked again as tokens expired"


async def test_429_with_retry_after_is_retried_and_honoured(kube, kube_server):
    kube_server.emulator.inject("GET", "/configmaps", 429, times=2, headers={"Retry-After": "1"})
    started = time.monotonic()
    assert await kube.list("v1", "ConfigMap", "default") == []
    assert 1.8 <= time.monotonic() - started < 6, "two waits of Retry-After: 1"


async def test_500_on_apply_is_retried_and_403_is_not(kube, kube_server):
    kube_server.emulator.inject("PATCH", "/configmaps/a", 500, times=1)
    applied = await kube.apply(configmap("a", namespace="default"), "stackyard-test")
    assert applied["metadata"]["name"] == "a"
    before = kube_server.emulator.count("PATCH", "/configmaps/b")
    kube_server.emulator.inject("PATCH", "/configmaps/b", 403, times=5)
    with pytest.raises(ApiError) as refused:
        await kube.apply(configmap("b", namespace="default"), "stackyard-test")
    assert refused.value.status == 403
    assert kube_server.emulator.count("PATCH", "/configmaps/b") - before == 1, "a 403 is final"
    assert await kube.get(Ref("v1", "ConfigMap", "b", "default")) is None


class SkewedClock:
    """A wall clock off by `offset` (another node's idea of now)."""

    def __init__(self, offset: timedelta):
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


async def test_replicas_with_skewed_clocks_never_both_lead(kube):
    """renewTime is written by the holder's clock; a candidate whose clock runs an hour ahead must not take over."""
    holder = LeaseElector(kube, "stackyard-system", "replica-a", lease_seconds=1, renew_every=0.2,
                          wall_clock=SkewedClock(timedelta(hours=-1)))
    candidate = LeaseElector(kube, "stackyard-system", "replica-b", lease_seconds=1, renew_every=0.2,
                             wall_clock=SkewedClock(timedelta(hours=1)))
    assert await holder.try_acquire()
    keeper = asyncio.create_task(holder.keep())
    standby = asyncio.create_task(candidate.acquire())
    try:
        deadline = time.monotonic() + 3.0  # three lease durations while the holder renews
        while time.monotonic() < deadline:
            assert not standby.done(), "the candidate took a lease that was being renewed"
            assert not keeper.done(), "the holder lost a lease it was renewing"
            await asyncio.sleep(0.1)
    finally:
        keeper.cancel()
    await asyncio.wait_for(standby, timeout=10)  # once the holder stops, the record stops changing
    lease = await kube.get(candidate.ref)
    assert lease["spec"]["holderIdentity"] == "replica-b"

    async def holder_lost() -> bool:
        return not await holder.try_acquire()

    assert await eventually(holder_lost)


async def test_a_silent_api_server_fails_the_call_at_its_deadline(kube_server):
    """A connection that says nothing (no reset: a partition, a load balancer's idle drop) is not alive: a call,
    discovery included, fails within the read deadline as a network error, and works again once it heals."""
    server = urllib.parse.urlsplit(kube_server.url)
    proxy = BlackholeProxy(server.hostname or "127.0.0.1", server.port or 80).start()
    client = Kube(url_configuration(f"http://127.0.0.1:{proxy.port}"), request_timeout=(1.0, 1.0))
    try:
        assert await client.list("v1", "ConfigMap", "default") == []
        proxy.silence()
        for call in (lambda: client.list("v1", "ConfigMap", "default"),
                     lambda: client.get(Ref("v1", "ConfigMap", "a", "default")),
                     client.forget_discovery):  # discovering again: in the pool, off the event loop
            started = time.monotonic()
            with pytest.raises(CALL_ERRORS):
                await asyncio.wait_for(call(), timeout=10)
            assert time.monotonic() - started < 5, "the read deadline (1 s), not the test's guard"
        proxy.heal()
        assert await client.list("v1", "ConfigMap", "default") == []
    finally:
        await client.close()
        proxy.stop()
