"""Kopf persistence: only a digest of the last handled object, never a copy (Stacks can be large), and kept in
the status, with the handlers' progress, so that one reconcile is one status write (no metadata patch)."""

from __future__ import annotations

import hashlib
import json

import kopf

from ..config import ROTATE_PAK_ANNOTATION

DIGEST_KEY = "last-handled-digest"
CHANGED_MARKER = "stackyard.dev/changed-since-last-handled"


def essence_digest(essence: object) -> str:
    return hashlib.sha256(json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Stores only a sha256 of the last handled essence, in `stackyard.dev/last-handled-digest`.

    Kopf only needs to know whether the essence changed (our handlers reconcile
    the whole object, never a field diff): `fetch` returns the current essence
    when the digest matches, and a marker essence that differs when it does not.
    The PAK rotation annotation is kept in the essence so that rotating triggers
    an update, although Kopf otherwise ignores annotations under its own prefix.
    """

    def __init__(self, prefix: str = "stackyard.dev"):
        super().__init__(prefix=prefix, key=DIGEST_KEY, v1=False)

    def build(self, *, body, extra_fields=None):  # type: ignore[no-untyped-def]
        essence = super().build(body=body, extra_fields=extra_fields)
        rotation = body.metadata.annotations.get(ROTATE_PAK_ANNOTATION)
        if rotation is not None:
            essence.setdefault("metadata", {}).setdefault("annotations", {})[ROTATE_PAK_ANNOTATION] = rotation
        return essence

    def fetch(self, *, body):  # type: ignore[no-untyped-def]
        stored = None
        for full_key in self.make_keys(self.key, body=body):
            stored = body.metadata.annotations.get(full_key) or stored
        if stored is None:
            return None
        current = self.build(body=body)
        if stored.strip() == essence_digest(current):
            return current
        return {**current, CHANGED_MARKER: True}

    def store(self, *, body, patch, essence):  # type: ignore[no-untyped-def]
        for full_key in self.make_keys(self.key, body=body):
            patch.metadata.annotations[full_key] = essence_digest(essence)
        self._store_marker(prefix=self.prefix, patch=patch, body=body)


class StatusDigestDiffBaseStorage(kopf.StatusDiffBaseStorage):
    """The digest of `DigestDiffBaseStorage`, kept in `status.kopf.lastHandledDigest`.

    Kopf writes it in the same patch as the handler's status, so a reconcile is
    one write to the status subresource instead of a metadata patch plus a
    status patch. An object last handled by an earlier version (digest in the
    annotation) is read from the annotation until its next reconcile.
    """

    def __init__(self, prefix: str = "stackyard.dev"):
        super().__init__(field="status.kopf.lastHandledDigest")
        self.annotations = DigestDiffBaseStorage(prefix)

    def build(self, *, body, extra_fields=None):  # type: ignore[no-untyped-def]
        return self.annotations.build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body):  # type: ignore[no-untyped-def]
        stored = ((body.get("status") or {}).get("kopf") or {}).get("lastHandledDigest")
        if stored is None:
            return self.annotations.fetch(body=body)
        current = self.build(body=body)
        if stored == essence_digest(current):
            return current
        return {**current, CHANGED_MARKER: True}

    def store(self, *, body, patch, essence):  # type: ignore[no-untyped-def]
        patch.status.setdefault("kopf", {})["lastHandledDigest"] = essence_digest(essence)
