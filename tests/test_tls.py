"""Transport security with real TLS on 127.0.0.1 and certificates the test makes (trustme): the agent trusts the
CA it is given, renewed files are picked up without a restart, a broken renewal keeps the old pair, mutual TLS,
and no key sent in clear.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import trustme

from stackyard.agent.broker import BrokerClient, BrokerError
from stackyard.tls import InsecureBroker, check_broker_url, client_context

from .api_harness import make_agent, make_stack, running_api
from .loop_harness import configmap, setup_loop, start_agent, wait_applied
from .operator_harness import eventually
from .test_api_faults import until


class CertDir:
    """A mounted Secret as the kubelet writes it: files reached through a `..data` symlink that renewals swap."""

    def __init__(self, root: Path):
        self.root = root
        self.version = 0

    def write(self, cert: bytes, key: bytes) -> None:
        self.version += 1
        folder = self.root / f"..v{self.version}"
        folder.mkdir(parents=True)
        (folder / "tls.crt").write_bytes(cert)
        (folder / "tls.key").write_bytes(key)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")  # atomic, as the kubelet does
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")

    @property
    def cert(self) -> str:
        return str(self.root / "tls.crt")

    @property
    def key(self) -> str:
        return str(self.root / "tls.key")


@pytest.fixture
def ca():
    return trustme.CA()


def issue(ca: trustme.CA) -> tuple[bytes, bytes]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    return b"".join(pem.bytes() for pem in leaf.cert_chain_pems), leaf.private_key_pem.bytes()


@pytest.fixture
def certs(tmp_path, ca) -> CertDir:
    folder = CertDir(tmp_path / "tls")
    folder.write(*issue(ca))
    return folder


@pytest.fixture
def ca_file(tmp_path, ca) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def served_serial(url: str, ca_file: str) -> int:
    """The serial number of the certificate a new connection to `url` is served."""
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=ca_file)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        return int(writer.get_extra_info("peercert")["serialNumber"], 16)
    finally:
        writer.close()


async def test_an_agent_with_the_ca_syncs_and_one_without_it_says_why(operator, cluster, target, db_url, certs, ca_file,
                                                                        tmp_path):
    async with running_api(db_url, tls_cert_file=certs.cert, tls_key_file=certs.key) as api:
        assert api.url.startswith("https://")
        target_server, view = target
        pak_file = await setup_loop(cluster, [configmap("a", namespace="apps")], tmp_path)
        agent = await start_agent(api.url, pak_file, target_server, tls=client_context(ca_file))
        try:
            await wait_applied(cluster, "web")
            assert "a" in await view.configmaps()
        finally:
            await agent.stop()
        stranger = BrokerClient(api.url, lambda: pak_file.read_text())  # the system's CAs only
        try:
            with pytest.raises(BrokerError) as refused:
                await stranger.identity()
        finally:
            await stranger.close()
        assert "certificate is not trusted" in str(refused.value) and "--ca-file" in str(refused.value)


async def test_renewed_files_serve_new_connections_and_open_long_polls_survive(db_url, certs, ca, ca_file, caplog):
    caplog.set_level(logging.ERROR, "stackyard.tls")
    async with running_api(db_url, tls_cert_file=certs.cert, tls_key_file=certs.key, tls_reload_interval=0.5) as api:
        _, token = await make_agent(api.store, "edge")
        await make_stack(api.store, "ns/web", "a: 1\n", targets=[("edge", "eu-1")])
        before = await served_serial(api.url, ca_file)
        expiry = api.metrics.registry.get_sample_value("stackyard_api_tls_certificate_expiry_timestamp_seconds")
        assert expiry and expiry > time.time()
        broker = BrokerClient(api.url, lambda: token, tls=client_context(ca_file))
        try:
            first = await broker.target_state(None, 0)
            waiting = asyncio.create_task(broker.target_state(first.etag, 4))  # a long-poll on an open connection

            async def long_polling() -> bool:
                return api.metrics.registry.get_sample_value("stackyard_api_long_polls") == 1

            await eventually(long_polling, timeout=5)
            certs.write(*issue(ca))  # cert-manager renews: a symlink swap
            renewed = time.monotonic()

            async def new_certificate():
                return await served_serial(api.url, ca_file) != before

            await until(new_certificate, timeout=10)
            assert time.monotonic() - renewed < 10
            answer = await waiting
            assert not answer.changed, "the long-poll opened before the renewal ended normally (304)"

            # a broken renewal (a key that does not match): the previous pair stays, said once
            current = await served_serial(api.url, ca_file)
            other_cert, _ = issue(ca)
            _, other_key = issue(ca)
            certs.write(other_cert, other_key)
            await until(lambda: _errors(api, 1), timeout=10)
            await asyncio.sleep(1.5)  # several reload periods: the same broken files are not reported again
            assert await served_serial(api.url, ca_file) == current
            assert api.metrics.registry.get_sample_value("stackyard_api_tls_reload_errors_total") == 1
            assert len([r for r in caplog.records if "do not load" in r.getMessage()]) == 1
            async with aiohttp.ClientSession() as http, http.get(api.url + "/readyz",
                                                                 ssl=client_context(ca_file).context) as ready:
                assert ready.status == 200, "a failed renewal is not a readiness problem"
        finally:
            await broker.close()


async def _errors(api, count: int) -> bool:
    return api.metrics.registry.get_sample_value("stackyard_api_tls_reload_errors_total") == count


async def test_mutual_tls_refuses_a_client_without_a_certificate(db_url, certs, ca, ca_file, tmp_path):
    client_ca = trustme.CA()
    client_ca_file = tmp_path / "client-ca.pem"
    client_ca.cert_pem.write_to_path(str(client_ca_file))
    async with running_api(db_url, tls_cert_file=certs.cert, tls_key_file=certs.key,
                           tls_client_ca_file=str(client_ca_file)) as api:
        _, token = await make_agent(api.store, "edge")
        anonymous = BrokerClient(api.url, lambda: token, tls=client_context(ca_file))
        try:
            with pytest.raises(BrokerError):
                await anonymous.identity()
        finally:
            await anonymous.close()
        leaf = client_ca.issue_cert("edge.eu-1.agents")
        cert_file, key_file = tmp_path / "client.crt", tmp_path / "client.key"
        cert_file.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        key_file.write_bytes(leaf.private_key_pem.bytes())
        known = BrokerClient(api.url, lambda: token, tls=client_context(ca_file, str(cert_file), str(key_file)))
        try:
            assert (await known.identity()).name == "edge", "the certificate lets it connect; the key identifies it"
        finally:
            await known.close()
        wrong = BrokerClient(api.url, lambda: "sy_abcdefgh_" + "0" * 48,
                             tls=client_context(ca_file, str(cert_file), str(key_file)))
        try:
            with pytest.raises(BrokerError) as refused:
                await wrong.identity()
            assert refused.value.status == 401, "a certificate is no substitute for the key"
        finally:
            await wrong.close()


def test_the_agent_refuses_to_send_its_key_in_clear_before_connecting(tmp_path):
    assert check_broker_url("https://stackyard.example.com", False) is None
    assert check_broker_url("http://127.0.0.1:8080", False) is None
    assert check_broker_url("http://[::1]:8080", False) is None
    assert check_broker_url("http://localhost:8080", False) is None
    with pytest.raises(InsecureBroker) as refused:
        check_broker_url("http://stackyard.invalid", False)
    assert "--allow-insecure-http" in str(refused.value)
    assert "in clear" in check_broker_url("http://stackyard.invalid", True)
    (tmp_path / "pak").write_text("sy_abcdefgh_" + "a" * 48)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stackyard", "agent", "--broker-url", "http://stackyard.invalid",
                             "--pak-file", str(tmp_path / "pak"), "--kubeconfig", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and time.monotonic() - started < 30
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to send the agent key in clear to http://stackyard.invalid" in lines[0]
