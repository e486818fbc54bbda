"""PostgreSQL schema, migrations and queries. The only place that holds SQL."""

from .agents import Agent
from .base import Conflict, DatabaseTimeout, Immutable, NotFound, NotPermitted, NotTargeted, StoreError, within
from .desired import DESIRED_STATE_SQL, DesiredStack, Version
from .events import EventIn, EventRow
from .migrate import migrate
from .sealed import SealedRow
from .stacks import EMPTY_SHA256, LATEST_SQL, Content, DeploymentObject, EmitResult, checksummed_text, sha256_hex
from .store import TABLES, Store
from .targets import TARGET_ROWS_SQL, TargetRow, target_row_id

__all__ = [
    "Agent",
    "Conflict",
    "Content",
    "DESIRED_STATE_SQL",
    "DatabaseTimeout",
    "DeploymentObject",
    "DesiredStack",
    "Version",
    "EMPTY_SHA256",
    "EmitResult",
    "EventIn",
    "EventRow",
    "Immutable",
    "LATEST_SQL",
    "NotFound",
    "NotPermitted",
    "NotTargeted",
    "SealedRow",
    "Store",
    "StoreError",
    "TABLES",
    "TARGET_ROWS_SQL",
    "TargetRow",
    "migrate",
    "sha256_hex",
    "checksummed_text",
    "target_row_id",
    "within",
]
