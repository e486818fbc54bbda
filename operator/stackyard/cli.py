"""The `stackyard` command line. Every option also reads a `STACKYARD_*` environment variable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .logs import setup_logging

log = logging.getLogger("stackyard")

DEFAULT_DATA_DIR = ".stackyard"


def env_name(flag: str) -> str:
    """`--api-address` -> `STACKYARD_API_ADDRESS`."""
    return "STACKYARD_" + flag.lstrip("-").replace("-", "_").upper()


def add_option(parser: argparse.ArgumentParser, flag: str, help: str, default: object = None, **kwargs: Any) -> None:
    """Add `flag`, defaulting to its `STACKYARD_*` variable, then to `default`; --help shows both."""
    variable = env_name(flag)
    value = os.environ.get(variable, default)
    parser.add_argument(flag, default=value, help=f"{help} (env {variable}; default: %(default)s)", **kwargs)


def positive_int(value: str) -> int:
    """An argparse type: a whole number above zero."""
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not above zero")
    return number


def positive_float(value: str) -> float:
    """An argparse type: a number above zero."""
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not above zero")
    return number


def add_common(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--log-level", "log level", "INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    add_option(parser, "--log-format", "log format", "text", choices=["text", "json"])


def add_database(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--database-url",
        "libpq URL of the PostgreSQL store; unset starts the embedded PostgreSQL",
        None,
    )
    add_option(parser, "--data-dir", "data directory of the embedded PostgreSQL", DEFAULT_DATA_DIR)


@contextlib.contextmanager
def migrated_database(args: argparse.Namespace) -> Iterator[str]:
    """The database URL of `--database-url` (or the embedded server's), migrated to the current schema."""
    from .store import migrate
    from .store.location import database_url

    with database_url(args.database_url, args.data_dir) as url:
        applied = migrate(url)
        if applied:
            log.info("applied migrations %s", ", ".join(f"{v:04d}" for v in applied))
        else:
            log.info("schema is up to date; nothing to apply")
        yield url


def cmd_db_migrate(args: argparse.Namespace) -> int:
    with migrated_database(args):
        return 0


def add_encryption(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--encryption-key-file",
               "keys that seal Secret data in PostgreSQL, one base64 AES-256 key per line, the first encrypting;"
               " unset with the embedded PostgreSQL: a key generated in the data dir", None)


def encryption_key_file(args: argparse.Namespace) -> str | None:
    """The key file to use, checked: `--encryption-key-file`, else (embedded PostgreSQL only) `<data-dir>/encryption.key`,
    generated on first start. None with an external database and no key: Stacks with Secret data stall."""
    from .encryption import Keyring, generate_key_file

    path = args.encryption_key_file
    if not path and not args.database_url:
        path = os.path.join(args.data_dir, "encryption.key")
        if not os.path.exists(path):
            generate_key_file(Path(path))
            log.info("generated an encryption key for Secret data in %s: back it up with the data dir", path)
    if not path:
        log.warning("no --encryption-key-file: Stacks that ship Secret data stall until the operator has a key")
        return None
    Keyring.from_file(path)  # a bad file stops the start, naming the line
    return str(path)


def cmd_db_rotate_key(args: argparse.Namespace) -> int:
    from .controller.secrets import rotate_keys
    from .encryption import Keyring
    from .store import Store

    new = Keyring.from_file(args.new_key_file)
    old = Keyring.from_file(args.encryption_key_file) if args.encryption_key_file else None

    async def rotate(url: str) -> int:
        store = await Store.open(url, max_size=2, deadline=60.0)
        try:
            remaining = await rotate_keys(store, new, old, batch=args.batch_size)
        finally:
            await store.close()
        return 1 if remaining else 0

    with migrated_database(args) as url:
        return asyncio.run(rotate(url))


def cmd_db_url(args: argparse.Namespace) -> int:
    from .store.location import running_embedded_url

    if args.database_url:
        print(args.database_url)
        return 0
    url = running_embedded_url(args.data_dir)
    if url is None:
        print(
            f"the embedded PostgreSQL in {os.path.abspath(args.data_dir)} is not running;"
            " start it with `stackyard run` (or set STACKYARD_DATABASE_URL)",
            file=sys.stderr,
        )
        return 1
    print(url)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import OperatorConfig
    from .durations import duration_seconds, parse_duration
    from .serve import RunAddresses, run_all
    namespaces = [ns for value in args.namespace or [] for ns in value.split(",") if ns]
    key_file = encryption_key_file(args)
    with migrated_database(args) as url:
        config = OperatorConfig(
            database_url=url,
            namespaces=namespaces,
            all_namespaces=args.all_namespaces or not namespaces,
            heartbeat_interval=duration_seconds(args.heartbeat_interval),
            resync_interval=duration_seconds(args.resync_interval),
            retention_age=parse_duration(args.retention_age),
            retention_interval=duration_seconds(args.retention_interval),
            event_retention_age=parse_duration(args.event_retention_age),
            agent_deletion_timeout=duration_seconds(args.agent_deletion_timeout),
            encryption_key_file=key_file,
            leader_election_namespace=args.leader_election_namespace or None,
            identity=os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}",
        )
        scope = "all namespaces" if config.all_namespaces else ", ".join(namespaces)
        log.info("starting the operator for %s", scope)
        addresses = RunAddresses(metrics=args.metrics_address, health=args.health_address, api=args.api_address)
        asyncio.run(run_all(config, addresses, api_settings(args, key_file)))
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    from .serve import run_api

    key_file = encryption_key_file(args)
    with migrated_database(args) as url:
        asyncio.run(run_api(url, args.api_address, args.metrics_address, int(args.pool_size),
                            api_settings(args, key_file)))
    return 0


def add_api_limits(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--api-body-timeout", "a request body must arrive within this time (else 408)", "10s")
    add_option(parser, "--api-idle-timeout",
               "a connection must send a complete request header within this time; idle ones close after it", "15s")
    add_option(parser, "--api-database-timeout",
               "longest wait for a database connection; during an outage requests answer 503 within it", "500ms")
    add_option(parser, "--api-database-deadline",
               "every database call of a request completes within this, else 503 and the connection is discarded",
               "1s")
    add_option(parser, "--api-shutdown-timeout",
               "after SIGTERM, requests still running get this long (waiting long-polls are answered at once)", "5s")
    add_option(parser, "--api-max-connections",
               "open connections per process; more are closed on arrival (0: the open-file limit less 256)", "0", type=int)
    add_option(parser, "--api-long-polls-per-agent", "long-polls one agent may have waiting at once (else 429)", "4", type=positive_int)
    add_option(parser, "--api-events-per-second", "events one agent may report per second, sustained (else 429)", "10", type=positive_float)
    add_option(parser, "--api-events-burst", "events one agent may report at once after a quiet spell", "1000", type=positive_int)
    add_option(parser, "--api-heartbeats-per-second", "heartbeats one agent may send per second, sustained", "1", type=positive_float)
    add_option(parser, "--api-heartbeats-burst", "heartbeats one agent may send at once", "5", type=positive_int)
    add_option(parser, "--api-auth-failures-per-second",
               "failed authentications one source address may make per second before it gets 429", "2", type=positive_float)
    add_option(parser, "--api-auth-failures-burst", "failed authentications one source address may make at once", "20", type=positive_int)
    add_option(parser, "--api-events-per-object",
               "live events kept per agent and deployment object; older ones are deleted as new ones arrive", "50", type=positive_int)


def add_tls(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--tls-cert-file", "serve the agent API over TLS only, with this PEM certificate (chain);"
               " reloaded when the file changes", None)
    add_option(parser, "--tls-key-file", "the certificate's private key (PEM)", None)
    add_option(parser, "--tls-client-ca-file",
               "require agents to present a client certificate signed by this CA (besides their key)", None)


def api_settings(args: argparse.Namespace, key_file: str | None):  # -> ApiSettings (imported lazily)
    from .api import ApiSettings
    from .api.limits import LimitSettings
    from .durations import duration_seconds

    limits = LimitSettings(
        long_polls_per_agent=args.api_long_polls_per_agent,
        events_per_second=args.api_events_per_second, events_burst=args.api_events_burst,
        heartbeats_per_second=args.api_heartbeats_per_second, heartbeats_burst=args.api_heartbeats_burst,
        auth_failures_per_second=args.api_auth_failures_per_second,
        auth_failures_burst=args.api_auth_failures_burst,
        max_connections=args.api_max_connections,
    )
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise ValueError("--tls-cert-file and --tls-key-file go together (STACKYARD_TLS_CERT_FILE, STACKYARD_TLS_KEY_FILE)")
    if args.tls_client_ca_file and not args.tls_cert_file:
        raise ValueError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file: client certificates need TLS")
    return ApiSettings(tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                       tls_client_ca_file=args.tls_client_ca_file, encryption_key_file=key_file,
                       body_timeout=duration_seconds(args.api_body_timeout),
                       idle_timeout=duration_seconds(args.api_idle_timeout),
                       database_timeout=duration_seconds(args.api_database_timeout),
                       database_deadline=duration_seconds(args.api_database_deadline),
                       shutdown_timeout=duration_seconds(args.api_shutdown_timeout),
                       events_per_object=args.api_events_per_object, limits=limits)


def add_api(commands: argparse._SubParsersAction) -> None:
    api = commands.add_parser("api", help="the agent API alone (stateless over PostgreSQL; scale it out)")
    add_common(api)
    add_database(api)
    add_option(api, "--api-address", "listen address of the agent API", "0.0.0.0:8080")
    add_option(api, "--metrics-address", "listen address of /metrics", "0.0.0.0:9090")
    add_option(api, "--pool-size", "maximum PostgreSQL connections", "10")
    add_api_limits(api)
    add_tls(api)
    add_encryption(api)
    api.set_defaults(handler=cmd_api)


def add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="the operator, the agent API and /metrics in one process")
    add_common(run)
    add_database(run)
    env_namespaces = os.environ.get("STACKYARD_NAMESPACE")
    run.add_argument(
        "--namespace",
        action="append",
        default=[env_namespaces] if env_namespaces else None,
        help="watch only this namespace; repeatable or comma-separated (env STACKYARD_NAMESPACE; default: all)",
    )
    run.add_argument(
        "--all-namespaces",
        action="store_true",
        default=os.environ.get("STACKYARD_ALL_NAMESPACES", "").lower() in ("1", "true", "yes"),
        help="watch every namespace (env STACKYARD_ALL_NAMESPACES; the default when no --namespace is given)",
    )
    add_option(run, "--api-address", "listen address of the agent API", "0.0.0.0:8080")
    add_option(run, "--metrics-address", "listen address of /metrics", "0.0.0.0:9090")
    add_option(run, "--health-address", "listen address of the liveness probe /healthz", "0.0.0.0:8081")
    add_option(run, "--heartbeat-interval", "expected agent heartbeat interval; 3 missed make an agent Stale", "10s")
    add_option(run, "--resync-interval", "periodic status resync (safety net behind LISTEN/NOTIFY)", "30s")
    add_option(run, "--retention-age", "hard-delete soft-deleted rows older than this", "7d")
    add_option(run, "--retention-interval", "how often the retention purge runs", "1h")
    add_option(run, "--agent-deletion-timeout",
               "a deleted Agent's agent gets this long to remove what it holds before its key is revoked", "5m")
    add_option(run, "--event-retention-age",
               "delete live agent events older than this (the newest of each kind per target stays)", "7d")
    add_option(run, "--leader-election-namespace",
               "namespace of the Lease for leader election (replicas stand by); unset runs without election", None)
    add_api_limits(run)
    add_tls(run)
    add_encryption(run)
    run.set_defaults(handler=cmd_run)


def cmd_agent(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .agent.loop import AgentSettings
    from .agent.main import AgentTls, run_agent
    from .durations import duration_seconds

    from .tls import check_broker_url

    if not args.broker_url or not args.pak_file:
        raise ValueError("--broker-url and --pak-file are required (or STACKYARD_BROKER_URL and STACKYARD_PAK_FILE)")
    warning = check_broker_url(args.broker_url, args.allow_insecure_http)  # before any connection is opened
    if warning is not None:
        log.warning("%s", warning)
    if bool(args.client_cert_file) != bool(args.client_key_file):
        raise ValueError("--client-cert-file and --client-key-file go together")
    settings = AgentSettings(
        namespace=args.namespace,
        heartbeat_interval=duration_seconds(args.heartbeat_interval),
        resync_interval=duration_seconds(args.resync_interval),
        retry_max=duration_seconds(args.retry_max),
        health_poll_max=duration_seconds(args.health_poll_max),
    )
    asyncio.run(run_agent(args.broker_url, Path(args.pak_file), settings, args.metrics_address, args.health_address,
                          kubeconfig=args.kubeconfig,
                          tls=AgentTls(args.ca_file, args.client_cert_file, args.client_key_file)))
    return 0


def add_agent(commands: argparse._SubParsersAction) -> None:
    agent = commands.add_parser("agent", help="the agent in a target cluster")
    add_common(agent)
    add_option(agent, "--broker-url", "base URL of the stackyard agent API", None)
    add_option(agent, "--pak-file", "file holding this agent's API key (the pak key of Secret <agent>-pak)", None)
    add_option(agent, "--kubeconfig", "kubeconfig of the target cluster; unset uses the in-cluster service account", None)
    add_option(agent, "--ca-file", "PEM bundle of the CAs that sign the broker's certificate, used instead of the"
               " system's; reloaded when it changes", None)
    add_option(agent, "--client-cert-file", "client certificate (PEM) for a broker that requires one", None)
    add_option(agent, "--client-key-file", "the client certificate's private key (PEM)", None)
    agent.add_argument("--allow-insecure-http", action="store_true",
                       default=os.environ.get("STACKYARD_ALLOW_INSECURE_HTTP", "").lower() in ("1", "true", "yes"),
                       help="allow an http:// broker URL to a host that is not loopback: the key travels in clear"
                            " (env STACKYARD_ALLOW_INSECURE_HTTP; default: refused)")
    add_option(agent, "--namespace", "namespace of the agent's inventory ConfigMaps", "stackyard-system")
    add_option(agent, "--heartbeat-interval", "time between heartbeats", "10s")
    add_option(agent, "--resync-interval", "re-apply everything this often to repair drift", "5m")
    add_option(agent, "--retry-max", "cap of the exponential retry backoff", "60s")
    add_option(agent, "--health-poll-max", "longest wait between health checks of a stack not healthy yet", "30s")
    add_option(agent, "--metrics-address", "listen address of /metrics", "0.0.0.0:9091")
    add_option(agent, "--health-address", "listen address of /healthz", "0.0.0.0:8082")
    agent.set_defaults(handler=cmd_agent)


def _store_url(args: argparse.Namespace) -> str | None:
    """The store's own database, which the sidecar monitors when its config names no instance."""
    from .store.location import running_embedded_url

    return args.database_url or running_embedded_url(args.data_dir)


def cmd_dbagent(args: argparse.Namespace) -> int:
    from .dbagent.main import check_status, run_dbagent

    if args.action == "status":
        from .durations import duration_seconds

        fresh, message = check_status(args.config, duration_seconds(args.max_age) if args.max_age else None)
        print(message)
        return 0 if fresh else 1
    asyncio.run(run_dbagent(args.config, _store_url(args)))
    return 0


def add_dbagent(commands: argparse._SubParsersAction) -> None:
    dbagent = commands.add_parser("dbagent", help="the PostgreSQL monitoring sidecar (`status` checks its freshness)")
    dbagent.add_argument("action", nargs="?", choices=["run", "status"], default="run",
                         help="run the sidecar (default) or check that its last collection is fresh")
    add_common(dbagent)
    add_database(dbagent)
    add_option(dbagent, "--config", "YAML configuration file; unset monitors the store's own database", None)
    add_option(dbagent, "--max-age", "for status: the oldest acceptable last collection (default 3x the longest interval)", None)
    dbagent.set_defaults(handler=cmd_dbagent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stackyard", description=__doc__)
    parser.add_argument("--version", action="version", version=f"stackyard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    migrate_parser = db_commands.add_parser("migrate", help="apply pending schema migrations")
    url_parser = db_commands.add_parser("url", help="print the database URL in use")
    for sub, handler in ((migrate_parser, cmd_db_migrate), (url_parser, cmd_db_url)):
        add_common(sub)
        add_database(sub)
        sub.set_defaults(handler=handler)
    rotate_parser = db_commands.add_parser(
        "rotate-key", help="re-seal every stored Secret value under the first key of --new-key-file (while running)")
    add_common(rotate_parser)
    add_database(rotate_parser)
    add_encryption(rotate_parser)
    rotate_parser.add_argument("--new-key-file", required=True,
                               help="key file whose first key seals from now on (its other keys, and those of"
                                    " --encryption-key-file, open what is stored)")
    add_option(rotate_parser, "--batch-size", "deployment objects re-sealed per transaction", "100", type=positive_int)
    rotate_parser.set_defaults(handler=cmd_db_rotate_key)
    add_run(commands)
    add_api(commands)
    add_agent(commands)
    add_dbagent(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stackyard` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except asyncio.CancelledError:  # a task cancelled while the process stopped (SIGTERM): a stop, not a failure
        log.info("%s stopped", args.command)
        return 0
    except Exception as exc:  # a command's last line of defence: say what failed, no traceback at INFO
        log.error("%s failed: %s", args.command, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1


if __name__ == "__main__":
    sys.exit(main())
