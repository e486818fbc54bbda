"""The agent-facing HTTP API (`/api/v1`), stateless over PostgreSQL."""

from .app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
