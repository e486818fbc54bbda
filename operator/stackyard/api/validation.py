"""Input rules of the agent API: what a request may carry before anything of it reaches the store.

Each rule covers a class of input, not one example: every string is checked
for what PostgreSQL can store, every pattern must match the whole value (as in
JSON Schema, not Python's `$`), every body has a bounded depth, and query
numbers are ASCII digits of bounded length.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from ..jsonshape import depth

MAX_DEPTH = 16
_WAIT = re.compile(r"[0-9]{1,4}")
_ETAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')
# The one form of a UUID in a path: lower-case hex, 8-4-4-4-12 (RFC 9562 §4; no braces, urn: or upper case).
CANONICAL_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_CANONICAL_UUID = re.compile(CANONICAL_UUID[:-1] + r"\Z")
_JSON_MEDIA = re.compile(r"\s*application/(?:[A-Za-z0-9.!#$&^_-]+\+)?json\s*(?:;.*)?\Z", re.IGNORECASE | re.DOTALL)


class InvalidInput(ValueError):
    """A request part that breaks an input rule; the message names the part."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _whole_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """JSON Schema `pattern` with ECMA-262 semantics: `$` does not match before a trailing newline."""
    if not isinstance(instance, str):
        return
    anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    if re.search(anchored, instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


StrictValidator = jsonschema.validators.extend(Draft7Validator, {"pattern": _whole_pattern})


def unstorable(value: Any) -> str | None:
    """Where a JSON value holds text PostgreSQL cannot store (NUL, or a lone UTF-16 surrogate), else None."""
    stack: list[tuple[Any, str]] = [(value, "body")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return f"{where} contains a NUL character"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where} contains a lone UTF-16 surrogate"
        elif isinstance(item, dict):
            for key, sub in item.items():
                stack.append((key, f"{where} (a key)"))
                stack.append((sub, f"{where}/{key}"))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}/{index}") for index, sub in enumerate(item))
    return None


def parse_body(raw: bytes, schema: dict[str, Any]) -> Any:
    """Decode, bound and validate a JSON body; InvalidInput with the first problem."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidInput("invalid_body", f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("invalid_json", f"the body is not valid JSON: {exc}") from None
    if depth(body) > MAX_DEPTH:
        raise InvalidInput("invalid_body", f"the body is nested deeper than {MAX_DEPTH} levels")
    problem = unstorable(body)
    if problem is not None:
        raise InvalidInput("invalid_text", problem)
    error = jsonschema.exceptions.best_match(StrictValidator(schema).iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise InvalidInput("invalid_body", f"{where}: {error.message}"[:500])
    return body


def parse_wait(raw: str, maximum: int) -> int:
    """The `wait` query parameter: ASCII digits, 0 to `maximum` seconds."""
    if not _WAIT.fullmatch(raw) or int(raw) > maximum:
        raise InvalidInput("invalid_wait", f"wait must be a whole number of seconds from 0 to {maximum}")
    return int(raw)


def none_match(header: str | None, etag: str) -> bool:
    """True when `If-None-Match` matches `etag` (RFC 9110 §13.1.2: `*`, a list, weak comparison)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    position, text = 0, header.strip()
    while position < len(text):
        match = _ETAG.match(text, position)
        if match is None:
            return False  # malformed: the condition is not met, the full answer goes out
        if match.group(2) == opaque:
            return True
        position = match.end()
    return False


def canonical_uuid(raw: str) -> uuid.UUID | None:
    """The UUID in `raw` when it is written in its canonical form, else None."""
    return uuid.UUID(raw) if _CANONICAL_UUID.match(raw) else None


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON (`application/json`, `application/x+json`, with parameters)."""
    return content_type is not None and _JSON_MEDIA.match(content_type) is not None
