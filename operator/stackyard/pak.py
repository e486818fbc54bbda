"""Prefixed API keys (PAK) of agents: `sy_<8 char id>_<48 char secret>`; only a sha256 of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PAK_PATTERN = re.compile(r"sy_([a-z0-9]{8})_([A-Za-z0-9]{32,128})")


@dataclass(frozen=True)
class Pak:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"sy_{self.key_id}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def generate() -> Pak:
    """A new random key."""
    return Pak(secrets.token_hex(4), secrets.token_hex(24))


def parse(token: str) -> Pak | None:
    """The key in `token`, or None when it is not a well-formed PAK."""
    match = PAK_PATTERN.fullmatch(token.strip())
    if match is None:
        return None
    return Pak(match.group(1), match.group(2))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def verify(token: str, stored_hash: str | None, stored_key_id: str | None = None) -> bool:
    """Constant-time check of `token` against a stored secret hash and key id.

    Keys issued before key ids were stored (`stored_key_id` None) are checked by their secret alone.
    """
    key = parse(token)
    return key is not None and matches(key, stored_hash, stored_key_id)


def matches(key: Pak, stored_hash: str | None, stored_key_id: str | None = None) -> bool:
    """Constant-time check of a parsed key against a stored secret hash and key id."""
    if not stored_hash:
        return False
    secret_ok = hmac.compare_digest(key.secret_hash, stored_hash)
    id_ok = stored_key_id is None or hmac.compare_digest(key.key_id, stored_key_id)
    return secret_ok and id_ok
