"""PostgreSQL schema, migrations and queries. The only place that holds SQL."""

from .migrate import migrate
from .store import (
    Agent,
    Conflict,
    DeploymentObject,
    DesiredStack,
    EmitResult,
    EventIn,
    Immutable,
    NotFound,
    NotPermitted,
    NotTargeted,
    Store,
    StoreError,
    TargetRow,
    sha256_hex,
    target_row_id,
)

__all__ = [
    "Agent",
    "Conflict",
    "DeploymentObject",
    "DesiredStack",
    "EmitResult",
    "EventIn",
    "Immutable",
    "NotFound",
    "NotPermitted",
    "NotTargeted",
    "TargetRow",
    "Store",
    "StoreError",
    "migrate",
    "sha256_hex",
    "target_row_id",
]
