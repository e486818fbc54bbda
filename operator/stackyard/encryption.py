"""Secret data at rest: AES-256-GCM under keys from a key file, and keyed checksums (docs/architecture.md,
"Secrets").

The key file holds one key per line, each 32 random bytes written as base64 (a file of exactly 32 raw bytes
is one key too): the first line encrypts, every line decrypts, so a rotation adds the new key first, runs
`stackyard db rotate-key`, then drops the old one. A key's id is the first 8 hex digits of the sha256 of the
key. Processes re-read the file when it changes.

What is sealed: the values of every Secret's `data` and `stringData` in a deployment object's YAML, each as
`sy1:<key id>:<base64 of nonce and ciphertext>` (the key id and the field's path are authenticated with it).
The rest of the YAML stays readable, so the store, the status and the agent's inventory work as before. The
checksum of content with Secrets is an HMAC-SHA256 under a key derived from the encryption key, so a
low-entropy password cannot be found from it; content without Secrets keeps its plain sha256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .yamldocs import dump_documents, load_documents

PREFIX = "sy1:"
KEY_BYTES = 32


class EncryptionError(Exception):
    """Base of the key problems (the file, a missing key); messages never hold key material or secret data."""


class BadKeyFile(EncryptionError):
    """The key file cannot be read as keys."""


class MissingKey(EncryptionError):
    """A value was sealed with a key the key file does not hold."""

    def __init__(self, key_id: str):
        super().__init__(f"stored Secret data is encrypted with key {key_id}, which the encryption key file does not"
                         " hold: add that key to the file (a line of its own), or restore it")
        self.key_id = key_id


class Undecryptable(EncryptionError):
    """A sealed value does not decrypt (tampered with, or a key with the right id but other bytes)."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def parse_keys(raw: bytes, where: str) -> list[bytes]:
    """The keys of a key file: raw 32 bytes, or base64 keys one per line (blank lines and # comments skipped)."""
    if len(raw) == KEY_BYTES:  # a key of raw bytes (a base64 key is 44 characters)
        return [raw]
    keys = []
    for number, line in enumerate(raw.decode("ascii", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise BadKeyFile(f"{where}, line {number}: not base64 (a key is 32 random bytes in base64)") from None
        if len(key) != KEY_BYTES:
            raise BadKeyFile(f"{where}, line {number}: {len(key)} bytes; an AES-256 key is {KEY_BYTES}")
        keys.append(key)
    if not keys:
        raise BadKeyFile(f"{where} holds no key")
    return keys


def new_key_text() -> str:
    """A fresh key as a key file line."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def generate_key_file(path: Path) -> None:
    """Write a new key file (mode 0600) unless one exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"# stackyard encryption key (first line encrypts, every line decrypts)\n{new_key_text()}\n")


@dataclass
class Keyring:
    """The keys of a key file; `current` encrypts, all decrypt. `refresh()` re-reads a changed file."""

    keys: list[bytes]
    path: Path | None = None
    _stamp: tuple[float, int] | None = field(default=None, repr=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "Keyring":
        path = Path(path)
        try:
            raw = path.read_bytes()
            stat = path.stat()
        except OSError as exc:
            raise BadKeyFile(f"cannot read the encryption key file {path}: {exc.strerror}") from None
        return cls(parse_keys(raw, str(path)), path, (stat.st_mtime, stat.st_size))

    def refresh(self) -> None:
        """Re-read the file when it changed (a rotation adds or drops a line); a bad new file keeps the keys."""
        if self.path is None:
            return
        try:
            stat = self.path.stat()
        except OSError:
            return
        if (stat.st_mtime, stat.st_size) == self._stamp:
            return
        fresh = Keyring.from_file(self.path)
        self.keys, self._stamp = fresh.keys, fresh._stamp

    @property
    def current_id(self) -> str:
        return key_id(self.keys[0])

    def ids(self) -> set[str]:
        return {key_id(k) for k in self.keys}

    def _key(self, wanted: str) -> bytes:
        for key in self.keys:
            if key_id(key) == wanted:
                return key
        raise MissingKey(wanted)

    def seal(self, plain: bytes, where: str) -> str:
        """`plain` encrypted under the current key; `where` (the field's path) is authenticated with it."""
        kid, nonce = self.current_id, secrets.token_bytes(12)
        sealed = AESGCM(self.keys[0]).encrypt(nonce, plain, f"{kid}:{where}".encode())
        return f"{PREFIX}{kid}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, token: str, where: str) -> bytes:
        kid, _, body = token[len(PREFIX):].partition(":")
        raw = base64.b64decode(body)
        try:
            return AESGCM(self._key(kid)).decrypt(raw[:12], raw[12:], f"{kid}:{where}".encode())
        except InvalidTag:
            raise Undecryptable(f"a sealed value at {where} does not decrypt with key {kid}") from None

    def mac(self, content: str, kid: str | None = None) -> str:
        """A keyed checksum (HMAC-SHA256 under a key derived from key `kid`, default the current one) of content
        with Secret data. Comparing with a stored version uses the key that sealed it, so adding a new key does
        not make every unchanged Stack look changed."""
        derived = HKDF(hashes.SHA256(), 32, salt=None, info=b"stackyard checksum").derive(
            self._key(kid) if kid else self.keys[0])
        return hmac.new(derived, content.encode("utf-8"), hashlib.sha256).hexdigest()


# Deployment object content ---------------------------------------------------------------------------------


def _secret_fields(documents: list[Any]) -> Iterator[tuple[dict[str, Any], str, str, str]]:
    """(mapping, key, path, field) of every value of every Secret's data and stringData."""
    for index, doc in enumerate(documents):
        if not isinstance(doc, dict) or doc.get("kind") != "Secret" or doc.get("apiVersion") != "v1":
            continue
        for field_name in ("data", "stringData"):
            values = doc.get(field_name)
            if isinstance(values, dict):
                for key in list(values):
                    yield values, key, f"{index}/{field_name}/{key}", field_name


def has_secret_data(content: str) -> bool:
    """Whether canonical YAML holds a Secret with data (cheap enough to call on every render)."""
    if "kind: Secret" not in content:
        return False
    return any(True for _ in _secret_fields(load_documents(content)))


def seal_content(keyring: Keyring, content: str) -> str:
    """Canonical YAML with every Secret value sealed (the rest as it was)."""
    documents = load_documents(content)
    for values, key, where, _field in _secret_fields(documents):
        values[key] = keyring.seal(str(values[key]).encode("utf-8"), where)
    return dump_documents(documents)


def is_sealed(content: str) -> bool:
    return PREFIX in content


def open_content(keyring: Keyring, content: str) -> str:
    """The YAML the agent applies: every sealed Secret value opened (MissingKey, Undecryptable)."""
    if not is_sealed(content):
        return content
    documents = load_documents(content)
    for values, key, where, _field in _secret_fields(documents):
        value = values[key]
        if isinstance(value, str) and value.startswith(PREFIX):
            values[key] = keyring.open(value, where).decode("utf-8")
    return dump_documents(documents)


def sealed_key_ids(content: str) -> set[str]:
    """The key ids sealed values of this content name."""
    found = set()
    for part in content.split(PREFIX)[1:]:
        found.add(part.split(":", 1)[0])
    return found
