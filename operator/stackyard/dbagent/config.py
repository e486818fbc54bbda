"""dbagent configuration (README, "The database sidecar"): YAML checked against one JSON Schema.

The schema (`SCHEMA`) holds every rule about shape: known keys only, types,
enums. What a schema cannot say (durations, libpq strings, ports, names used
twice) is checked after it. Every ConfigError starts with the key at fault.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import yaml

from ..durations import parse_duration
from .collectors import ALERT_METRICS, DEFAULT_INTERVALS, NAMES as COLLECTORS

RETENTION_TABLES = ("activity", "queries", "replication", "locks", "deadlocks", "metrics", "alerts")
DEFAULT_RETENTION = {"activity": 86400.0, "queries": 604800.0, "replication": 86400.0, "locks": 86400.0,
                     "deadlocks": 604800.0, "metrics": 86400.0, "alerts": 2592000.0}
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
# Below this no collector query can finish on a loaded server; a typo such as `2ms` for `2s` is refused.
MIN_STATEMENT_TIMEOUT = 0.1
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

_DURATION = {"type": ["string", "number"], "description": "a duration such as 500ms, 2s, 5m, 24h, 7d (or seconds)"}


def _durations_of(names: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object", "properties": {n: _DURATION for n in names}, "additionalProperties": False}


SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "database": {"type": "string", "minLength": 1},
        "listen": {"type": "string", "pattern": r"^.+:[0-9]+$"},
        "intervals": _durations_of(COLLECTORS),
        "retention": _durations_of(RETENTION_TABLES),
        "statement_timeout": _DURATION,
        "connect_timeout": _DURATION,
        "top_queries": {"type": "integer", "minimum": 1, "maximum": 1000},
        "instances": {"type": ["array", "null"], "items": {
            "type": "object", "additionalProperties": False, "required": ["name", "connection"],
            "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z0-9_-]+$"},
                           "connection": {"type": "string", "minLength": 1}},
        }},
        "alerts": {"type": ["object", "null"], "additionalProperties": False, "properties": {
            "enabled": {"type": "boolean"},
            "webhook_url": {"type": ["string", "null"], "pattern": r"^https?://"},
            "timeout": _DURATION,
            "max_age": _DURATION,
            "max_backoff": _DURATION,
            "rules": {"type": ["array", "null"], "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "metric", "op", "threshold"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "metric": {"enum": list(ALERT_METRICS)},
                    "op": {"enum": list(OPERATORS)},
                    "threshold": {"type": "number"},
                    "for": _DURATION,
                    "labels": {"type": "object", "additionalProperties": {"type": "string"},
                               "propertyNames": {"pattern": LABEL_NAME}},
                },
            }},
        }},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


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
    labels: tuple[tuple[str, str], ...] = ()

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
    webhook_timeout: float = 10.0
    alert_max_age: float = 86400.0
    alert_max_backoff: float = 300.0
    rules: tuple[AlertRule, ...] = ()
    statement_timeout: float = 2.0
    connect_timeout: float = 5.0
    top_queries: int = 10
    source_hash: str = ""


def strip_password(connection: str) -> str:
    """The connection string without its password (never stored or logged)."""
    info: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(connection)
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **info)


def _key(path: Any) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "<root>"


def _schema_error(error: jsonschema.ValidationError) -> ConfigError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set((error.schema.get("properties") or {}))
        extra = sorted(k for k in error.instance if k not in known)
        if extra:
            return ConfigError(_key([*path, extra[0]]), "unknown key")
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return ConfigError(_key([*path, missing[0]]), "is required")
    if error.validator == "enum":
        return ConfigError(_key(path), f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}")
    if error.validator == "pattern" and path and path[-1] == "webhook_url":
        return ConfigError(_key(path), "must be an http(s) URL")
    if error.validator == "pattern" and path == ["listen"]:
        return ConfigError("listen", "must look like HOST:PORT")
    if error.validator == "pattern" and path and path[-1] == "name":
        return ConfigError(_key(path), "must be a non-empty name of letters, digits, '-' and '_'")
    if error.validator == "type" and error.validator_value == "boolean":
        return ConfigError(_key(path), "must be true or false")
    return ConfigError(_key(path), error.message)


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0:
            return float(value)
        raise ConfigError(key, "must be longer than zero")
    try:
        return parse_duration(str(value)).total_seconds()
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _port(text: str, key: str) -> None:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(key, f"port {text!r} is not a number from 1 to 65535")


def _durations(raw: Any, key: str, defaults: dict[str, float]) -> dict[str, float]:
    return {**defaults, **{name: _seconds(value, f"{key}.{name}") for name, value in (raw or {}).items()}}


def _instances(raw: Any) -> tuple[Instance, ...]:
    seen: set[str] = set()
    result = []
    for index, item in enumerate(raw or ()):
        key = f"instances[{index}]"
        name, connection = item["name"], item["connection"]
        if name in seen:
            raise ConfigError(f"{key}.name", f"{name!r} is used twice")
        try:
            info = psycopg.conninfo.conninfo_to_dict(connection)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"{key}.connection", f"is not a valid libpq connection string: {exc}") from None
        for port in str(info.get("port") or "5432").split(","):
            _port(port.strip() or "5432", f"{key}.connection")
        seen.add(name)
        result.append(Instance(name, connection))
    return tuple(result)


def _rules(raw: Any) -> tuple[AlertRule, ...]:
    rules = []
    for index, item in enumerate(raw or ()):
        key = f"alerts.rules[{index}]"
        for_value = item.get("for")
        for_seconds = 0.0 if for_value in (None, 0, "0", "0s") else _seconds(for_value, f"{key}.for")
        rules.append(AlertRule(item["name"], item["metric"], item["op"], float(item["threshold"]), for_seconds,
                               tuple(sorted((item.get("labels") or {}).items()))))
    return tuple(rules)


def parse_config(data: Any, default_connection: str | None = None) -> DbAgentConfig:
    """Validate a loaded YAML document; ConfigError names the key at fault."""
    if data is None:
        data = {}
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise _schema_error(errors[0])
    alerts = data.get("alerts") or {}
    instances = _instances(data.get("instances"))
    if not instances and default_connection:
        instances = (Instance("default", default_connection),)
    listen = data.get("listen", "0.0.0.0:9188")
    _port(listen.rsplit(":", 1)[1], "listen")
    statement_timeout = _seconds(data.get("statement_timeout", "2s"), "statement_timeout")
    if statement_timeout < MIN_STATEMENT_TIMEOUT:
        raise ConfigError("statement_timeout", f"must be at least {MIN_STATEMENT_TIMEOUT * 1000:.0f}ms:"
                                               " below that no collector query can finish")
    return DbAgentConfig(
        enabled=data.get("enabled", True),
        database=data.get("database", "dbagent.sqlite"),
        listen=listen,
        intervals=_durations(data.get("intervals"), "intervals", DEFAULT_INTERVALS),
        retention=_durations(data.get("retention"), "retention", DEFAULT_RETENTION),
        instances=instances,
        alerts_enabled=bool(alerts.get("enabled", bool(alerts.get("rules")))),
        webhook_url=alerts.get("webhook_url"),
        webhook_timeout=_seconds(alerts.get("timeout", "10s"), "alerts.timeout"),
        alert_max_age=_seconds(alerts.get("max_age", "24h"), "alerts.max_age"),
        alert_max_backoff=_seconds(alerts.get("max_backoff", "5m"), "alerts.max_backoff"),
        rules=_rules(alerts.get("rules")),
        statement_timeout=statement_timeout,
        connect_timeout=_seconds(data.get("connect_timeout", "5s"), "connect_timeout"),
        top_queries=data.get("top_queries", 10),
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
