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
from .conditions import now_rfc3339

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
