"""Running the Kopf operator with stackyard's registry."""

from __future__ import annotations

from typing import Any

import kopf

from ..config import OperatorConfig
from ..encryption import Keyring
from ..metrics import Metrics
from .handlers import Context, build_registry


async def run_operator(
    config: OperatorConfig,
    metrics: Metrics,
    *,
    stop_flag: Any = None,
    ready_flag: Any = None,
    liveness_endpoint: str | None = None,
) -> None:
    """Run the operator until `stop_flag` is set (or the task is cancelled)."""
    await kopf.operator(
        registry=build_registry(config),
        clusterwide=config.all_namespaces,
        namespaces=config.namespaces,
        standalone=True,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(ctx=Context(config=config, metrics=metrics, keyring=Keyring.from_file(
            config.encryption_key_file) if config.encryption_key_file else None)),
    )
