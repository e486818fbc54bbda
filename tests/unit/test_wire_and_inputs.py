"""The wire model, the API's input rules, agent manifests, keys, durations and backoff: pure functions."""

from __future__ import annotations

import json

import pytest

from stackyard import pak
from stackyard.agent.manifests import BadManifest, Inventory, decorate, parse_objects, refs
from stackyard.api.validation import InvalidInput, depth, none_match, parse_body, parse_wait, unstorable
from stackyard.backoff import Backoff
from stackyard.durations import duration_seconds
from stackyard.protocol import WireStack, apply_rank, stacks_of, target_state_document


def test_the_target_state_round_trips_through_the_wire_model():
    stack = WireStack("s", "ns/web", False, "d", 4, "c" * 64, False, "a: 1\n")
    document = json.loads(json.dumps(target_state_document("agent", [stack])))
    assert stacks_of(document) == [stack]


def test_one_apply_order_for_rendering_applying_and_deleting():
    assert apply_rank("Namespace") < apply_rank("CustomResourceDefinition") < apply_rank("ConfigMap")
    objects = parse_objects("kind: ConfigMap\napiVersion: v1\nmetadata: {name: a}\n---\n"
                            "kind: Namespace\napiVersion: v1\nmetadata: {name: n}\n")
    assert [o["kind"] for o in objects] == ["Namespace", "ConfigMap"]


def test_manifests_decorate_and_inventories_round_trip():
    (obj,) = parse_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: apps}\nstatus: {x: 1}\n")
    decorated = decorate(obj, "stack", "do", "sum")
    assert decorated["metadata"]["labels"]["stackyard.dev/stack"] == "stack" and "status" not in decorated
    assert "labels" not in obj["metadata"], "the input is not modified"
    inventory = Inventory("stack", "ns/web", "do", "sum", True, refs([obj]))
    assert Inventory.from_configmap(inventory.configmap("stackyard-system")) == inventory
    with pytest.raises(BadManifest):
        parse_objects("kind: [unclosed\n")


def test_input_rules_of_the_api():
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-f]+$"}}}
    assert parse_body(b'{"id": "abc"}', schema) == {"id": "abc"}
    for raw, code in ((b'{"id": "abc\\n"}', "invalid_body"), (b'{"id": "a\\u0000"}', "invalid_text"),
                      (b"[" * 50 + b"]" * 50, "invalid_body"), (b"{", "invalid_json")):
        with pytest.raises(InvalidInput) as refused:
            parse_body(raw, schema)
        assert refused.value.code == code, raw[:20]
    assert depth({"a": [{"b": 1}]}) == 3 and unstorable({"k": "\ud800"}) is not None
    assert parse_wait("30", 60) == 30
    for bad in ("61", "²", "-1", "1 "):
        with pytest.raises(InvalidInput):
            parse_wait(bad, 60)


@pytest.mark.parametrize("header,matches", [
    ('"x"', True), ('W/"x"', True), ('"y", "x"', True), ("*", True), ('"y"', False), ("garbage", False), (None, False),
])
def test_if_none_match_per_rfc_9110(header, matches):
    assert none_match(header, '"x"') is matches


def test_keys_verify_only_with_their_secret_and_id():
    key = pak.generate()
    assert pak.verify(key.token, key.secret_hash, key.key_id)
    assert not pak.verify(f"sy_{'0' * 8}_{key.secret}", key.secret_hash, key.key_id)
    assert not pak.verify(pak.generate().token, key.secret_hash, key.key_id)
    assert pak.parse("sy_short_x") is None and pak.parse(key.token + "\n") == key


def test_durations_and_backoff():
    assert duration_seconds("500ms") == 0.5 and duration_seconds("2h") == 7200
    with pytest.raises(ValueError):
        duration_seconds("soon")
    backoff = Backoff(base=1.0, maximum=8.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.waiting()
    backoff.reset()
    assert not backoff.waiting() and backoff.next_delay() == 1.0
    jittered = Backoff(base=10.0, jitter=0.2).next_delay()
    assert 8.0 <= jittered <= 12.0
