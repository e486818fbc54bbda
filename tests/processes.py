"""The `stackyard` command as a real process, with the caller's environment but no `STACKYARD_*` settings."""

from __future__ import annotations

import os
import subprocess
import sys


def stackyard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STACKYARD_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "stackyard", *args], capture_output=True, text=True, timeout=120, env=full_env
    )
