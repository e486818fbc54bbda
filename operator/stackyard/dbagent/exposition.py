"""The PostgreSQL families of `/metrics`, written as postgres_exporter writes them.

prometheus_client renames every counter family to `<name>_total`; dashboards
built for postgres_exporter query `pg_stat_database_xact_commit` (a counter
without the suffix). So these families are rendered here, in the text format
(version 0.0.4), and the sidecar's own metrics keep prometheus_client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.utils import floatToGoString

from .collectors import FAMILIES

Samples = list[tuple[dict[str, str], float]]
UP_HELP = "Whether the last connection to the server worked (1) or not (0)."


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    pairs = ",".join(f'{key}="{_escape(str(labels[key]))}"' for key in labels)
    return f"{name}{{{pairs}}} {floatToGoString(value)}\n"


def render(up: Mapping[str, float], latest: Mapping[str, Mapping[str, Samples]]) -> str:
    """`pg_up{server}` and every family of `latest` (server -> family -> samples), each with its HELP and TYPE."""
    lines = [f"# HELP pg_up {UP_HELP}\n", "# TYPE pg_up gauge\n"]
    lines += [_sample("pg_up", {"server": server}, value) for server, value in sorted(up.items())]
    names = sorted({name for families in latest.values() for name in families})
    for name in names:
        family = FAMILIES[name]
        lines.append(f"# HELP {name} {_escape(family.help)}\n# TYPE {name} {family.type}\n")
        for server, families in sorted(latest.items()):
            lines += _samples(name, server, families.get(name, ()))
    return "".join(lines)


def _samples(name: str, server: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    return [_sample(name, {"server": server, **labels}, value) for labels, value in samples]
