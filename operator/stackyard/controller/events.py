"""Kubernetes Events that stackyard posts itself, outside Kopf's handler context (the status mirror, timers).

Kopf posts the Events of log records and milestones inside handlers; the
mirror runs in its own task, where Kopf's event queue is not available, so it
posts core/v1 Events directly with the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..kube import CALL_ERRORS, Kube, describe
from .conditions import becomes_stalled, now_rfc3339

log = logging.getLogger(__name__)

MAX_EVENT_MESSAGE = 1024
COMPONENT = "stackyard"


def event_body(ref: Mapping[str, Any], type_: str, reason: str, message: str, now: str) -> dict[str, Any]:
    """A core/v1 Event about `ref` (a body with apiVersion, kind and metadata name/namespace/uid)."""
    meta = ref.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'stackyard')[:200]}.", "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": ref.get("apiVersion"), "kind": ref.get("kind"), "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "type": type_,
        "reason": reason,
        "message": message[:MAX_EVENT_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(kube: Kube, ref: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post one Event; a failure is logged, never raised (an Event is not worth failing a status update for)."""
    body = event_body(ref, type_, reason, message, now_rfc3339())
    try:
        await kube.create(body)
    except CALL_ERRORS as exc:
        log.warning("could not post the %s event %s: %s", type_, reason, describe(exc))


class Stalls:
    """The last Stalled verdict announced per object (uid -> (generation, reason)), shared by the handlers and the
    mirror, which can reach the same verdict at the same moment from different snapshots of the status."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, str]] = {}

    def first(self, uid: str, generation: Any, reason: str) -> bool:
        """Record a verdict; True the first time this object is Stalled for `reason` at `generation`."""
        if self._last.get(uid) == (generation, reason):
            return False
        self._last[uid] = (generation, reason)
        return True


async def announce_stall(kube: Kube, ref: Mapping[str, Any], previous: Mapping[str, Any],
                         status: Mapping[str, Any], stalls: Stalls) -> None:
    """When a status path (the mirror, a resync) made an object Stalled: log it and post a Warning Event named
    after the reason, once (as the handlers do), not on every pass that reaches the same verdict."""
    stalled = next((c for c in status.get("conditions") or () if isinstance(c, Mapping)
                    and c.get("type") == "Stalled" and c.get("status") == "True"), None)
    if stalled is None:
        return
    generation, reason = status.get("observedGeneration"), str(stalled.get("reason"))
    uid = str((ref.get("metadata") or {}).get("uid"))
    if not becomes_stalled(previous, generation, reason) or not stalls.first(uid, generation, reason):
        return
    meta = ref.get("metadata") or {}
    log.warning("%s %s/%s is stalled (%s): %s", ref.get("kind"), meta.get("namespace"), meta.get("name"),
                stalled.get("reason"), stalled.get("message"))
    await post_event(kube, ref, "Warning", str(stalled.get("reason")), str(stalled.get("message")))
