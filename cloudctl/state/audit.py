"""The audit row every SQLite write op adds in its own transaction."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from cloudctl.state.store import Change


def record(
    conn: sqlite3.Connection, change: Change, action: str, target: str, **detail: Any
) -> None:
    conn.execute(
        "INSERT INTO audit (at, actor, action, target, reason, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), change.actor, action, target, change.reason, json.dumps(detail)),
    )
