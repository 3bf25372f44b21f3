"""The inventory store: one interface (store.StateStore), SQLite behind it by default."""

from cloudctl.state.errors import Conflict, NotFound, StateError
from cloudctl.state.models import AuditEntry, Job, JobState, Lease, Node, ProgressLine
from cloudctl.state.store import StateStore

__all__ = [
    "AuditEntry",
    "Conflict",
    "Job",
    "JobState",
    "Lease",
    "Node",
    "NotFound",
    "ProgressLine",
    "StateError",
    "StateStore",
]
