"""The API's renderer: sealed content opened once per deployment object, within a budget, never without a key."""

from __future__ import annotations

import uuid

import pytest

from stackyard.api.rendering import KeyUnavailable, Renderer
from stackyard.encryption import Keyring, generate_key_file, seal_content

CONTENT = "---\napiVersion: v1\ndata:\n  password: aHVudGVyMg==\nkind: Secret\nmetadata:\n  name: s\n"


@pytest.fixture
def keyring(tmp_path) -> Keyring:
    generate_key_file(tmp_path / "k")
    return Keyring.from_file(tmp_path / "k")


def test_each_deployment_object_is_opened_once_and_kept_within_the_budget(keyring, monkeypatch):
    sealed = seal_content(keyring, CONTENT)
    opener = Renderer(keyring, budget=len(CONTENT) * 2)
    opens = []
    monkeypatch.setattr("stackyard.api.rendering.open_content", lambda k, c: opens.append(c) or CONTENT)
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert opener.open(first, "sum", sealed) == CONTENT
    assert opener.open(first, "sum", sealed) == CONTENT
    assert len(opens) == 1, "the second answer comes from the cache"
    opener.open(first, "resealed", sealed)  # a re-seal changes the checksum: opened again
    assert len(opens) == 2
    opener.open(second, "sum", sealed)
    opener.open(third, "sum", sealed)
    assert len(opener) == 2, "the budget holds two contents; the least recently used went"
    assert opener.open("plain-id", "sum", "kind: ConfigMap\n") == "kind: ConfigMap\n"  # type: ignore[arg-type]
    assert len(opens) == 4 and len(opener) == 2, "content without sealed values is neither opened nor kept"


def test_without_the_key_nothing_is_opened(keyring, tmp_path):
    sealed = seal_content(keyring, CONTENT)
    with pytest.raises(KeyUnavailable, match="no encryption key"):
        Renderer(None).open(uuid.uuid4(), "sum", sealed)
    generate_key_file(tmp_path / "other")
    with pytest.raises(KeyUnavailable, match=keyring.current_id):
        Renderer(Keyring.from_file(tmp_path / "other")).open(uuid.uuid4(), "sum", sealed)
