"""Secrets a Stack ships: by reference (`spec.secretRefs`) or inline, always sealed at rest (docs/architecture.md,
"Secrets").

The operator reads a referenced Secret of the Stack's own namespace only (a reference names no namespace, so
tenancy holds by construction), and only when it carries the label `stackyard.dev/stack-secret=true`: the
operator follows changes of labelled Secrets only (`handlers.secret_changed`), so an unlabelled one would be
shipped once and never again. Nothing here ever puts a Secret's data into a message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import logging

from ..encryption import Keyring, MissingKey, has_secret_data, open_content, seal_content
from ..store import Content, DeploymentObject, Store, checksummed_text
from .render import InvalidSpec, required_name

log = logging.getLogger(__name__)

SECRET_LABEL = "stackyard.dev/stack-secret"
SecretReader = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]  # (namespace, name) -> the Secret or None


@dataclass(frozen=True)
class SecretRef:
    name: str
    target_namespace: str
    target_name: str


def secret_refs(spec: Mapping[str, Any]) -> list[SecretRef]:
    """`spec.secretRefs`, or InvalidSpec naming the bad entry."""
    refs = spec.get("secretRefs") or []
    if not isinstance(refs, list):
        raise InvalidSpec("InvalidSpec", "spec.secretRefs must be a list")
    found = []
    for index, ref in enumerate(refs):
        where = f"spec.secretRefs[{index}]"
        if not isinstance(ref, Mapping):
            raise InvalidSpec("InvalidSpec", f"{where} must be an object with name and targetNamespace")
        name = required_name(ref.get("name"), f"{where}.name")
        found.append(SecretRef(name, required_name(ref.get("targetNamespace"), f"{where}.targetNamespace"),
                               required_name(ref.get("targetName") or name, f"{where}.targetName")))
    return found


async def shipped_secrets(read: SecretReader, namespace: str, refs: list[SecretRef]) -> list[dict[str, Any]]:
    """The Secrets to ship for `refs`: each source's type and data under its target name and namespace."""
    shipped = []
    for ref in refs:
        source = await read(namespace, ref.name)
        if source is None:
            raise InvalidSpec("SecretNotFound", f"Secret {namespace}/{ref.name} (spec.secretRefs) does not exist;"
                                                " the Stack ships nothing new until it does")
        if ((source.get("metadata") or {}).get("labels") or {}).get(SECRET_LABEL) != "true":
            raise InvalidSpec("SecretNotLabelled", f"Secret {namespace}/{ref.name} needs the label {SECRET_LABEL}=true"
                                                   " before a Stack may ship it (the operator follows the changes of"
                                                   " labelled Secrets only)")
        shipped.append({"apiVersion": "v1", "kind": "Secret", "type": source.get("type") or "Opaque",
                        "metadata": {"name": ref.target_name, "namespace": ref.target_namespace},
                        "data": dict(source.get("data") or {})})
    return shipped


def inline_secrets(resources: Any) -> list[str]:
    """Names of the Secrets with data written inline in spec.resources (readable by anyone who may get the Stack)."""
    return [str((r.get("metadata") or {}).get("name")) for r in resources or ()
            if isinstance(r, Mapping) and r.get("kind") == "Secret" and (r.get("data") or r.get("stringData"))]


def sealed(keyring: Keyring | None, content: str, latest: DeploymentObject | None,
           overlays: list[dict[str, Any]] | None = None) -> Content:
    """What the store keeps for canonical YAML (and its overlays): as it is without Secret data; else its Secret
    values sealed under the current key and a keyed checksum (computed with the key of `latest` when that holds
    the same content, so a new key alone makes no new version)."""
    if not has_secret_data(content):
        return Content.plain(content, overlays)
    if keyring is None:
        raise InvalidSpec("NoEncryptionKey", "this Stack ships Secret data and the operator has no encryption key:"
                                             " start it with --encryption-key-file")
    covered = checksummed_text(content, overlays)
    if latest is not None and latest.key_id is not None:
        try:
            if keyring.mac(covered, latest.key_id) == latest.yaml_checksum:
                return Content(latest.yaml_content, latest.yaml_checksum, latest.key_id, latest.overlays)
        except MissingKey as exc:
            raise InvalidSpec("EncryptionKeyMissing", str(exc)) from exc
    return Content(seal_content(keyring, content), keyring.mac(covered), keyring.current_id, overlays)


async def rotate_keys(store: Store, new: Keyring, old: Keyring | None = None, batch: int = 100) -> int:
    """Re-seal every stored Secret value under `new`'s first key (`stackyard db rotate-key`), batch by batch, while
    operators keep running; `old` (with `new`'s keys) opens what is stored. Returns how many deployment objects
    remain under other keys (0 when done: the old key may go). A row sealed with a key neither file holds is
    reported by key id and left as it is."""
    openers = Keyring([*new.keys, *(old.keys if old else [])])
    target = new.current_id
    total = sum(count for kid, count in (await store.key_ids_in_use()).items() if kid != target)
    log.info("re-sealing %d deployment objects under key %s", total, target)
    done, after, unreadable = 0, 0, set()
    while rows := await store.sealed_not_under(target, after, batch):
        changes = []
        for row in rows:
            after = row.sequence_id
            try:
                plain = open_content(openers, row.yaml_content)
            except MissingKey as exc:
                unreadable.add(exc.key_id)
                continue
            changes.append((row.id, row.key_id, seal_content(new, plain),
                            new.mac(checksummed_text(plain, row.overlays)), target))
        done += await store.reseal(changes)
        log.info("re-sealed %d of %d deployment objects", done, total)
    remaining = {kid: count for kid, count in (await store.key_ids_in_use()).items() if kid != target}
    if unreadable:
        log.error("deployment objects sealed with key(s) %s cannot be opened: add those keys to"
                  " --encryption-key-file and run again", ", ".join(sorted(unreadable)))
    if remaining:
        log.warning("still under other keys: %s (rows written meanwhile by an operator whose key file does not"
                    " start with the new key; run again once it does)",
                    ", ".join(f"{kid}: {count}" for kid, count in sorted(remaining.items())))
    else:
        log.info("every stored Secret value is sealed with key %s: older keys may leave the key file", target)
    return sum(remaining.values())
