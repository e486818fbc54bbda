"""Durations written like `500ms`, `2s`, `5m`, `24h`, `7d` (config files and command-line options)."""

from __future__ import annotations

import re
from datetime import timedelta

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`2s` -> 2 seconds. ValueError says what is accepted."""
    match = _PATTERN.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write a number and a unit: ms, s, m, h, d or w (e.g. 30s, 7d)")
    value = float(match.group(1)) * _SECONDS[match.group(2)]
    if value <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return timedelta(seconds=value)


def duration_seconds(text: str) -> float:
    return parse_duration(text).total_seconds()
