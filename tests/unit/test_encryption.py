"""The sealing of Secret values (stackyard.encryption): AES-256-GCM bound to the key id and the field's place."""

from __future__ import annotations

import base64
import os

import pytest

from stackyard.encryption import (
    BadKeyFile,
    Keyring,
    MissingKey,
    Undecryptable,
    generate_key_file,
    has_secret_data,
    open_content,
    seal_content,
    sealed_key_ids,
)

CONTENT = """---
apiVersion: v1
data:
  password: aHVudGVyMg==
  user: YXBw
kind: Secret
metadata:
  name: s
---
apiVersion: v1
data:
  password: not-a-secret
kind: ConfigMap
metadata:
  name: c
"""


@pytest.fixture
def keyring(tmp_path) -> Keyring:
    generate_key_file(tmp_path / "k")
    return Keyring.from_file(tmp_path / "k")


def test_only_secret_values_are_sealed_and_they_open_to_the_same_yaml(keyring):
    sealed = seal_content(keyring, CONTENT)
    assert "aHVudGVyMg==" not in sealed and "YXBw" not in sealed
    assert "password: not-a-secret" in sealed and "name: s" in sealed, "the rest stays readable"
    assert sealed_key_ids(sealed) == {keyring.current_id}
    assert open_content(keyring, sealed) == CONTENT
    assert seal_content(keyring, CONTENT) != sealed, "a fresh nonce each time"


def test_a_tampered_or_moved_value_does_not_open(keyring):
    sealed = seal_content(keyring, CONTENT)
    lines = sealed.splitlines()
    password = next(i for i, line in enumerate(lines) if line.strip().startswith("password: sy1:"))
    user = next(i for i, line in enumerate(lines) if line.strip().startswith("user: sy1:"))
    swapped = list(lines)
    swapped[password] = "  password: " + lines[user].split(": ", 1)[1]  # a value moved to another field
    with pytest.raises(Undecryptable):
        open_content(keyring, "\n".join(swapped))
    token = lines[password].split(": ", 1)[1]
    kid, body = token[len("sy1:"):].split(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    tampered = sealed.replace(token, f"sy1:{kid}:{base64.b64encode(bytes(raw)).decode()}")
    with pytest.raises(Undecryptable):
        open_content(keyring, tampered)


def test_a_value_under_a_key_the_file_lacks_names_the_key(keyring, tmp_path):
    generate_key_file(tmp_path / "other")
    sealed = seal_content(Keyring.from_file(tmp_path / "other"), CONTENT)
    with pytest.raises(MissingKey) as missing:
        open_content(keyring, sealed)
    assert missing.value.key_id in str(missing.value) and "aHVudGVyMg" not in str(missing.value)


def test_the_checksum_is_keyed(keyring, tmp_path):
    generate_key_file(tmp_path / "other")
    other = Keyring.from_file(tmp_path / "other")
    assert keyring.mac(CONTENT) != other.mac(CONTENT)
    both = Keyring([*other.keys, *keyring.keys])
    assert both.mac(CONTENT, keyring.current_id) == keyring.mac(CONTENT), "checked with the key that sealed it"


@pytest.mark.parametrize("text,error", [
    ("", "holds no key"),
    ("# only a comment\n", "holds no key"),
    ("!!!\n", "line 1: not base64"),
    (base64.b64encode(b"short").decode() + "\n", "line 1: 5 bytes; an AES-256 key is 32"),
])
def test_a_bad_key_file_names_the_line(tmp_path, text, error):
    (tmp_path / "k").write_text(text)
    with pytest.raises(BadKeyFile) as refused:
        Keyring.from_file(tmp_path / "k")
    assert error in str(refused.value)


def test_a_raw_key_and_a_changed_file_are_read(tmp_path):
    (tmp_path / "raw").write_bytes(os.urandom(32))
    assert len(Keyring.from_file(tmp_path / "raw").keys) == 1
    generate_key_file(tmp_path / "k")
    keyring = Keyring.from_file(tmp_path / "k")
    first = keyring.current_id
    generate_key_file(tmp_path / "new")
    new_line = (tmp_path / "new").read_text().splitlines()[-1]
    (tmp_path / "k").write_text(new_line + "\n" + (tmp_path / "k").read_text())
    os.utime(tmp_path / "k", (1, 1))  # a different mtime even on a coarse clock
    keyring.refresh()
    assert keyring.current_id != first and first in keyring.ids()
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_has_secret_data():
    assert has_secret_data(CONTENT)
    assert not has_secret_data(CONTENT.replace("kind: Secret", "kind: ConfigMap"))
