"""`Store`: the one object callers hold, made of one query class per domain of the data model.

| module | domain |
| --- | --- |
| `stacks.py` | stacks, deployment objects, staged rollout |
| `targets.py` | agent targets, tenancy, status rows |
| `agents.py` | agents, grants, keys |
| `events.py` | heartbeats and events |
| `desired.py` | the desired state the agent API serves |
| `retention.py` | scheduled deletes |
| `sealed.py` | sealed Secret data, re-sealing under a new key |

Every public coroutine runs under the store's deadline (`base.with_deadlines`).
"""

from __future__ import annotations

from .agents import AgentQueries
from .base import with_deadlines
from .desired import DesiredStateQueries
from .events import EventQueries
from .retention import RetentionQueries
from .sealed import SealedQueries
from .stacks import StackQueries
from .targets import TargetQueries

TABLES = ("stacks", "agents", "deployment_objects", "agent_events", "agent_targets", "labels", "annotations")


@with_deadlines
class Store(StackQueries, TargetQueries, AgentQueries, EventQueries, DesiredStateQueries, RetentionQueries,
            SealedQueries):
    """The PostgreSQL store behind the operator and the agent API."""
