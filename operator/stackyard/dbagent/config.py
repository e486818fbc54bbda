"""dbagent configuration (README, "The database sidecar"): YAML, validated on load; every error names its key."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from ..durations import parse_duration

from .collectors import DEFAULT_INTERVALS, NAMES as COLLECTORS
RETENTION_TABLES = ("activity", "queries", "replication", "locks", "deadlocks", "metrics", "alerts")
DEFAULT_RETENTION = {"activity": 86400.0, "queries": 604800.0, "replication": 86400.0, "locks": 86400.0,
                     "deadlocks": 604800.0, "metrics": 86400.0, "alerts": 2592000.0}
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
TOP_KEYS = {"enabled", "database", "listen", "intervals", "retention", "instances", "alerts", "statement_timeout",
            "top_queries"}


class ConfigError(ValueError):
    """A configuration problem; the message starts with the key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Instance:
    name: str
    connection: str

    @property
    def safe_connection(self) -> str:
        return strip_password(self.connection)


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    op: str
    threshold: float
    for_seconds: float

    def breached(self, value: float) -> bool:
        return {
            ">": value > self.threshold, ">=": value >= self.threshold, "<": value < self.threshold,
            "<=": value <= self.threshold, "==": value == self.threshold, "!=": value != self.threshold,
        }[self.op]


@dataclass(frozen=True)
class DbAgentConfig:
    enabled: bool = True
    database: str = "dbagent.sqlite"
    listen: str = "0.0.0.0:9188"
    intervals: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_INTERVALS))
    retention: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    instances: tuple[Instance, ...] = ()
    alerts_enabled: bool = False
    webhook_url: str | None = None
    rules: tuple[AlertRule, ...] = ()
    statement_timeout: float = 2.0
    top_queries: int = 10
    source_hash: str = ""


def strip_password(connection: str) -> str:
    """The connection string without its password (never stored or logged)."""
    info: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(connection)
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    try:
        return parse_duration(str(value)).total_seconds()
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key, "must be a mapping")
    return value


def _durations(raw: Any, key: str, allowed: tuple[str, ...], defaults: dict[str, float]) -> dict[str, float]:
    result = dict(defaults)
    for name, value in _mapping(raw, key).items():
        if name not in allowed:
            raise ConfigError(f"{key}.{name}", f"unknown; expected one of {', '.join(allowed)}")
        result[name] = _seconds(value, f"{key}.{name}")
    return result


def _instances(raw: Any) -> tuple[Instance, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("instances", "must be a list of {name, connection}")
    seen: set[str] = set()
    result = []
    for index, item in enumerate(raw):
        key = f"instances[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "must be a mapping with name and connection")
        name, connection = item.get("name"), item.get("connection")
        if not isinstance(name, str) or not INSTANCE_NAME.match(name):
            raise ConfigError(f"{key}.name", "must be a non-empty name of letters, digits, '-' and '_'")
        if name in seen:
            raise ConfigError(f"{key}.name", f"{name!r} is used twice")
        if not isinstance(connection, str) or not connection.strip():
            raise ConfigError(f"{key}.connection", "must be a libpq connection string or URL")
        try:
            psycopg.conninfo.conninfo_to_dict(connection)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"{key}.connection", f"is not a valid libpq connection string: {exc}") from None
        unknown = set(item) - {"name", "connection"}
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}", "unknown key")
        seen.add(name)
        result.append(Instance(name, connection))
    return tuple(result)


def _rules(raw: Any) -> tuple[AlertRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("alerts.rules", "must be a list")
    rules = []
    for index, item in enumerate(raw):
        key = f"alerts.rules[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(key, "must be a mapping with name, metric, op, threshold, for")
        for required in ("name", "metric", "op", "threshold"):
            if required not in item:
                raise ConfigError(f"{key}.{required}", "is required")
        if item["op"] not in OPERATORS:
            raise ConfigError(f"{key}.op", f"must be one of {' '.join(OPERATORS)}")
        threshold = item["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ConfigError(f"{key}.threshold", "must be a number")
        for_seconds = 0.0 if item.get("for") in (None, 0, "0", "0s") else _seconds(item["for"], f"{key}.for")
        rules.append(AlertRule(str(item["name"]), str(item["metric"]), item["op"], float(threshold), for_seconds))
    return tuple(rules)


def parse_config(data: Any, default_connection: str | None = None) -> DbAgentConfig:
    """Validate a loaded YAML document; ConfigError names the key at fault."""
    data = _mapping(data, "<root>")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key")
    alerts = _mapping(data.get("alerts"), "alerts")
    instances = _instances(data.get("instances"))
    if not instances and default_connection:
        instances = (Instance("default", default_connection),)
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("enabled", "must be true or false")
    webhook = alerts.get("webhook_url")
    if webhook is not None and not (isinstance(webhook, str) and re.match(r"^https?://", webhook)):
        raise ConfigError("alerts.webhook_url", "must be an http(s) URL")
    listen = data.get("listen", "0.0.0.0:9188")
    if not isinstance(listen, str) or not re.match(r"^.+:\d+$", listen):
        raise ConfigError("listen", "must look like HOST:PORT")
    top = data.get("top_queries", 10)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
        raise ConfigError("top_queries", "must be a whole number from 1 to 1000")
    database = data.get("database", "dbagent.sqlite")
    if not isinstance(database, str) or not database:
        raise ConfigError("database", "must be a file path")
    return DbAgentConfig(
        enabled=enabled,
        database=database,
        listen=listen,
        intervals=_durations(data.get("intervals"), "intervals", COLLECTORS, DEFAULT_INTERVALS),
        retention=_durations(data.get("retention"), "retention", RETENTION_TABLES, DEFAULT_RETENTION),
        instances=instances,
        alerts_enabled=bool(alerts.get("enabled", bool(alerts.get("rules")))),
        webhook_url=webhook,
        rules=_rules(alerts.get("rules")),
        statement_timeout=_seconds(data.get("statement_timeout", "2s"), "statement_timeout"),
        top_queries=top,
        source_hash=hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16],
    )


def load_config(path: str | Path | None, default_connection: str | None = None) -> DbAgentConfig:
    """Read and validate a config file (None: defaults, monitoring `default_connection`)."""
    if path is None:
        return parse_config({}, default_connection)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("<file>", f"{path} is not valid YAML: {exc}") from None
    return parse_config(data, default_connection)
