"""How a handler's work becomes status, Events and retries: the one place errors become conditions.

The handlers (`handlers.py`) share one `Context` per operator through Kopf's memo and hand their work to
`run_reconcile` / `run_delete`; resync timers go through `tolerant`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import psycopg
import psycopg_pool

from ..config import OperatorConfig
from ..encryption import Keyring
from ..kube import CALL_ERRORS, DynamicApiError, Kube, Ref, describe
from ..logs import Episodes
from ..metrics import Metrics
from ..store import Store
from .conditions import Outcome, Result, becomes_stalled, retrying_outcome, stalled_outcome, with_outcome
from .events import MAX_EVENT_MESSAGE, Stalls
from .mirror import Mirror
from .render import InvalidSpec

log = logging.getLogger("stackyard.controller.handlers")  # the name operators know these lines by
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg_pool.PoolTimeout, *CALL_ERRORS)
MAX_RETRY_DELAY = 30.0


@dataclass
class Context:
    """What every handler of one operator shares."""

    config: OperatorConfig
    metrics: Metrics
    defects: Episodes = field(default_factory=lambda: Episodes(quiet=3600.0))  # internal errors, logged once
    keyring: Keyring | None = None  # seals the Secret data of deployment objects (None: no key given)
    stalls: Stalls = field(default_factory=Stalls)  # Stalled verdicts announced (one Event each)
    store: Store | None = None
    kube: Kube | None = None
    mirror: Mirror | None = None
    mirror_task: asyncio.Task | None = None

    def require_store(self) -> Store:
        if self.store is None:
            raise kopf.TemporaryError("the store is not open yet", delay=1)
        return self.store

    def require_kube(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("not logged in to the Kubernetes API yet", delay=1)
        return self.kube

    def refreshed_keyring(self) -> Keyring | None:
        """The keyring, re-read when its file changed (a rotation adds or drops a key)."""
        if self.keyring is not None:
            self.keyring.refresh()
        return self.keyring

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """A Secret a Stack references (spec.secretRefs), or None."""
        return await self.require_kube().get(Ref("v1", "Secret", name, namespace))


def as_invalid_spec(exc: Exception) -> InvalidSpec | None:
    """Errors that retrying cannot fix, as the Stalled reason they become; None for transient ones.

    The API server's 4xx answers are permanent except 409 (conflict) and 429 (throttled);
    a value the database cannot hold (too long, bad encoding) is permanent too.
    """
    if isinstance(exc, DynamicApiError) and 400 <= int(exc.status or 0) < 500 and exc.status not in (409, 429):
        return InvalidSpec("KubernetesAPIRejected", f"the API server refused a write ({describe(exc)})")
    if isinstance(exc, psycopg.errors.DataError):
        return InvalidSpec("ValueNotStorable", f"a value cannot be stored: {exc.diag.message_primary or exc}")
    return None


def retry_delay(retry: int) -> float:
    return min(2.0 ** retry, MAX_RETRY_DELAY)


def write_outcome(patch: kopf.Patch, body: Mapping[str, Any], outcome: Outcome, fields: Mapping[str, Any]) -> None:
    """Put status fields, conditions and observedGeneration into the patch."""
    generation = body.get("metadata", {}).get("generation")
    for key, value in with_outcome(Result(outcome, dict(fields)), generation, body.get("status") or {}).items():
        patch.status[key] = value


def post_milestones(body: kopf.Body, result: Result) -> None:
    for milestone in result.milestones:
        kopf.event(body, type=milestone.type, reason=milestone.reason, message=milestone.message)


async def run_reconcile(
    ctx: Context,
    kind: str,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    retry: int,
    work: Callable[[], Awaitable[Result]],
) -> None:
    """Run one reconcile and record its outcome; the only place errors become conditions.

    Input that retrying cannot fix ends Stalled, with one Warning Event named after the reason when the
    object becomes Stalled (not again on every restart), and the handler returns: Kopf records the generation
    as handled, and nothing retries it until the spec changes. A transient error is retried with backoff. Any
    other error is a defect: its traceback goes to the operator's log once per object and kind of error, the
    object gets `Ready=False`/`InternalError` and a retry, and no Event or condition carries a traceback or a
    path of the server.
    """
    started = time.monotonic()
    previous = body.get("status") or {}
    try:
        try:
            result = await work()
        except (DynamicApiError, psycopg.errors.DataError) as exc:
            permanent = as_invalid_spec(exc)
            if permanent is None:
                raise
            raise permanent from exc
    except InvalidSpec as exc:
        ctx.metrics.reconcile_total.labels(kind, "stalled").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, exc.reason).inc()
        write_outcome(patch, body, stalled_outcome(exc.reason, exc.message), exc.status)
        generation = body.get("metadata", {}).get("generation")
        if becomes_stalled(previous, generation, exc.reason) and ctx.stalls.first(
                str(body.get("metadata", {}).get("uid")), generation, exc.reason):
            log.warning("%s %s is stalled (%s): %s", kind, object_name(body), exc.reason, exc.message)
            kopf.event(body, type="Warning", reason=exc.reason, message=exc.message[:MAX_EVENT_MESSAGE])
        return
    except TRANSIENT_ERRORS as exc:
        database = isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout))
        reason = "DatabaseUnavailable" if database else "KubernetesAPIError"
        detail = str(exc) if database else describe(exc)
        ctx.metrics.reconcile_total.labels(kind, "retry").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, reason).inc()
        write_outcome(patch, body, retrying_outcome(reason, f"will retry: {detail}"), {})
        log.warning("%s %s reconcile failed (%s), retrying: %s", kind, object_name(body), reason, detail)
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None
    except Exception as exc:  # a defect: say so plainly, keep the traceback in the log, retry slowly
        ctx.metrics.reconcile_total.labels(kind, "retry").inc()
        ctx.metrics.reconcile_errors_total.labels(kind, "InternalError").inc()
        what = type(exc).__name__
        if ctx.defects.starts(f"{body.get('metadata', {}).get('uid')}/{what}"):
            log.error("reconciling %s %s failed with an internal error", kind, object_name(body), exc_info=exc)
        message = f"reconciling failed with an internal error ({what}); the operator's log has the details"
        write_outcome(patch, body, retrying_outcome("InternalError", message, ready="False"), {})
        raise kopf.TemporaryError(f"internal error ({what}); see the operator's log", delay=MAX_RETRY_DELAY) from None
    finally:
        ctx.metrics.reconcile_duration_seconds.labels(kind).observe(time.monotonic() - started)
    if result.outcome.ready == "True":
        ctx.metrics.reconcile_total.labels(kind, "success").inc()
    else:  # an expected wait (a dependency that does not exist yet): INFO, no retry loop
        ctx.metrics.reconcile_total.labels(kind, "waiting").inc()
        logger.info("%s is waiting (%s): %s", kind, result.outcome.reason, result.outcome.message)
    write_outcome(patch, body, result.outcome, result.status)
    post_milestones(body, result)


def object_name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


async def run_delete(ctx: Context, kind: str, logger: kopf.Logger, retry: int, work: Callable[[], Awaitable[None]]) -> None:
    """Deletion work behind the finalizer: transient errors keep the finalizer and retry."""
    try:
        await work()
    except TRANSIENT_ERRORS as exc:
        ctx.metrics.reconcile_errors_total.labels(kind, "DeleteFailed").inc()
        logger.error("deleting %s failed, retrying: %s", kind, exc)
        raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from None


def tolerant(timer: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A resync timer that skips a cycle on transient errors instead of backing off for a minute."""

    @functools.wraps(timer)
    async def wrapper(*args: Any, logger: kopf.Logger, **kwargs: Any) -> None:
        try:
            await timer(*args, logger=logger, **kwargs)
        except TRANSIENT_ERRORS as exc:
            logger.debug("resync skipped: %s", exc)

    return wrapper


def unobserved(body: Mapping[str, Any]) -> bool:
    """True when the object's current generation was never observed: Kopf merged changes that ended where they
    started (A->B->A: no diff, no handler), or a forged `status.kopf` made it think the work was done."""
    meta = body.get("metadata") or {}
    return meta.get("generation") is not None and (body.get("status") or {}).get(
        "observedGeneration") != meta.get("generation")
