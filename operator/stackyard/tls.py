"""TLS contexts built from files that change on disk (docs/architecture.md, "TLS").

cert-manager renews a certificate by replacing the files of a mounted Secret
(a symlink swap). `ReloadingContext` keeps one `ssl.SSLContext` and, when
`refresh()` sees the files change, loads the new pair into a throwaway context
first: only a pair that loads (and matches) is then loaded into the live
context, so new handshakes get the new certificate and open connections keep
theirs (a client context is simply replaced: the agent asks for it at every
request). A broken or mismatched pair is reported once and the previous one
stays in service. A server's client CA can be added to but not withdrawn
without a restart (OpenSSL keeps what a context trusts).

Server side: TLS 1.2 at least, the standard library's secure defaults, and an
optional client CA (then a client certificate is required). Client side (the
agent): a CA bundle used instead of the system store, and an optional client
certificate.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

log = logging.getLogger(__name__)

Stamp = tuple[tuple[int, int, float, int], ...]


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    """What changes when a file is replaced, through a symlink swap too (inode, device, mtime, size)."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)  # follows symlinks: cert-manager's ..data swap changes the target
            found.append((st.st_ino, st.st_dev, st.st_mtime, st.st_size))
        except OSError:
            found.append((0, 0, 0.0, -1))
    return tuple(found)


def certificate_expiry(path: Path) -> datetime | None:
    """The notAfter of the first certificate in a PEM file (None when it cannot be read)."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


@dataclass
class ReloadingContext:
    """An SSLContext whose certificates follow their files; `refresh()` checks them (cheap: a stat per file)."""

    purpose: ssl.Purpose
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None  # server: the client CA (client certificates required); client: the trusted CAs
    on_error: Callable[[str], None] | None = None  # told once per broken set of files
    on_load: Callable[["ReloadingContext"], None] | None = None
    context: ssl.SSLContext = field(init=False)
    _stamp: Stamp = field(init=False, default=())
    _failed: Stamp | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.context = self._new_context()
        self._load(self.context)  # the first load must work: a bad pair at start is an error, not a fallback
        self._stamp = _stamp(self._paths())
        if self.on_load is not None:
            self.on_load(self)

    def _paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.cert_file, self.key_file, self.ca_file) if p is not None)

    @property
    def server(self) -> bool:
        return self.purpose == ssl.Purpose.CLIENT_AUTH

    def _new_context(self) -> ssl.SSLContext:
        if self.server:  # trusts no client CA but the one given (create_default_context would add the system's)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        else:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.server and self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
            context.verify_mode = ssl.CERT_REQUIRED

    def refresh(self) -> bool:
        """Load the files again if they changed; True when the live context now holds new ones."""
        stamp = _stamp(self._paths())
        if stamp == self._stamp or stamp == self._failed:
            return False
        try:
            trial = self._new_context()
            self._load(trial)  # nothing changes unless the whole set loads
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._failed = stamp
            message = f"new TLS files {', '.join(map(str, self._paths()))} do not load ({exc}); keeping the previous"
            log.error("%s ones", message)
            if self.on_error is not None:
                self.on_error(message)
            return False
        if self.server:
            self._load(self.context)  # the listening socket holds this object: new handshakes use what it has now
        else:
            self.context = trial  # the client asks for `context` at every request
        self._stamp, self._failed = stamp, None
        log.info("loaded renewed TLS files %s", ", ".join(map(str, self._paths())))
        if self.on_load is not None:
            self.on_load(self)
        return True


def server_context(cert_file: str, key_file: str, client_ca_file: str | None = None,
                   on_error: Callable[[str], None] | None = None,
                   on_load: Callable[[ReloadingContext], None] | None = None) -> ReloadingContext:
    """The API's TLS: its certificate and key, and a client CA when client certificates are required."""
    return ReloadingContext(ssl.Purpose.CLIENT_AUTH, Path(cert_file), Path(key_file),
                            Path(client_ca_file) if client_ca_file else None, on_error, on_load)


def client_context(ca_file: str | None = None, cert_file: str | None = None,
                   key_file: str | None = None) -> ReloadingContext:
    """The agent's TLS: the CAs it trusts (the system's without `ca_file`) and its optional client certificate."""
    return ReloadingContext(ssl.Purpose.SERVER_AUTH, Path(cert_file) if cert_file else None,
                            Path(key_file) if key_file else None, Path(ca_file) if ca_file else None)


class InsecureBroker(ValueError):
    """An http:// broker URL the agent must not send its key to."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_broker_url(url: str, allow_insecure_http: bool) -> str | None:
    """Raise InsecureBroker for a plain-HTTP URL to a host that is not loopback, unless allowed; the warning to
    log when it is allowed, else None. Checked before any connection is opened."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme != "http" or not parts.hostname:
        raise InsecureBroker(f"--broker-url {url!r} must be an https:// URL (or http:// to a loopback address)")
    if is_loopback(parts.hostname):
        return None
    if allow_insecure_http:
        return f"--allow-insecure-http: the agent key goes to {url} in clear; anyone on the way can read it"
    raise InsecureBroker(f"refusing to send the agent key in clear to {url}: use an https:// broker URL, or pass"
                         " --allow-insecure-http if the network between them is trusted")
