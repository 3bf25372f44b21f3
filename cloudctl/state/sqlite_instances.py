"""SQLite records of instances (domUs): size, placement rules and where each one runs.

A mixin of SqliteStore. Placement itself is decided by the scheduler from a snapshot; the store
only checks what must hold whatever the scheduler said: names and MACs unique, the volume
exists and is used by one instance at a time, the node is a hardware node.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from cloudctl.state.audit import record as record_audit
from cloudctl.state.errors import Conflict, NotFound
from cloudctl.state.models import Instance, InstanceState
from cloudctl.state.store import Change

_COLUMNS = (
    "name, uuid, mac, memory_mib, vcpus, node, state, grp, profile, volume, created_at, "
    "updated_at, boot"
)


def _instance(row: tuple) -> Instance:
    return Instance(
        name=row[0],
        uuid=row[1],
        mac=row[2],
        memory_mib=row[3],
        vcpus=row[4],
        node=row[5],
        state=InstanceState(row[6]),
        group=row[7],
        profile=row[8],
        volume=row[9],
        created_at=row[10],
        updated_at=row[11],
        boot=row[12],
    )


def _get(conn: sqlite3.Connection, name: str) -> Instance:
    row = conn.execute(f"SELECT {_COLUMNS} FROM instances WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no instance named {name!r}")
    return _instance(row)


def _check_hnode(conn: sqlite3.Connection, name: str) -> None:
    row = conn.execute("SELECT role FROM nodes WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no hardware node named {name!r}")
    if row[0] != "hnode":
        raise Conflict(f"node {name} is a {row[0] or 'discovered node'}, not a hardware node")


class InstanceRecords:
    """Needs `_write(op)` and `_read(sql, args)` from the store it is mixed into."""

    async def _write(self, op: Any) -> Any: ...  # provided by SqliteStore

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]: ...  # provided by SqliteStore

    async def create_instance(self, instance: Instance, change: Change) -> Instance:
        def op(conn: sqlite3.Connection) -> Instance:
            if conn.execute("SELECT 1 FROM instances WHERE name = ?", (instance.name,)).fetchone():
                raise Conflict(f"an instance named {instance.name} already exists")
            if conn.execute(
                "SELECT 1 FROM instances WHERE mac = ? UNION SELECT 1 FROM nodes WHERE mac = ?",
                (instance.mac, instance.mac),
            ).fetchone():
                raise Conflict(f"MAC {instance.mac} is already in use")
            if instance.volume is not None:
                if not conn.execute(
                    "SELECT 1 FROM volumes WHERE name = ?", (instance.volume,)
                ).fetchone():
                    raise NotFound(f"no volume named {instance.volume!r}")
                user = conn.execute(
                    "SELECT name FROM instances WHERE volume = ?", (instance.volume,)
                ).fetchone()
                if user is not None:
                    raise Conflict(f"volume {instance.volume} is already used by {user[0]}")
            if instance.node is not None:
                _check_hnode(conn, instance.node)
            conn.execute(
                f"INSERT INTO instances ({_COLUMNS}) VALUES ({', '.join('?' * 13)})",
                (
                    instance.name,
                    instance.uuid,
                    instance.mac,
                    instance.memory_mib,
                    instance.vcpus,
                    instance.node,
                    instance.state.value,
                    instance.group,
                    instance.profile,
                    instance.volume,
                    instance.created_at,
                    instance.updated_at,
                    instance.boot,
                ),
            )
            record_audit(
                conn,
                change,
                "instance.create",
                f"instance/{instance.name}",
                memory_mib=instance.memory_mib,
                vcpus=instance.vcpus,
                node=instance.node,
                group=instance.group,
                volume=instance.volume,
            )
            return _get(conn, instance.name)

        return await self._write(op)

    async def set_instance(
        self,
        name: str,
        *,
        state: InstanceState,
        node: str | None,
        change: Change,
        action: str = "instance.state",
    ) -> Instance:
        """Record where an instance is and what it does; audited (the node it runs on matters)."""

        def op(conn: sqlite3.Connection) -> Instance:
            before = _get(conn, name)
            if node is not None:
                _check_hnode(conn, node)
            conn.execute(
                "UPDATE instances SET state = ?, node = ?, updated_at = ? WHERE name = ?",
                (state.value, node, time.time(), name),
            )
            record_audit(
                conn,
                change,
                action,
                f"instance/{name}",
                state=state.value,
                node=node,
                was=before.state.value,
                was_on=before.node,
            )
            return _get(conn, name)

        return await self._write(op)

    async def remove_instance(self, name: str, change: Change) -> Instance:
        def op(conn: sqlite3.Connection) -> Instance:
            instance = _get(conn, name)
            conn.execute("DELETE FROM instances WHERE name = ?", (name,))
            record_audit(conn, change, "instance.destroy", f"instance/{name}", node=instance.node)
            return instance

        return await self._write(op)

    def get_instance(self, name: str) -> Instance | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM instances WHERE name = ?", (name,))
        return _instance(rows[0]) if rows else None

    def list_instances(self, *, node: str | None = None) -> list[Instance]:
        if node is None:
            rows = self._read(f"SELECT {_COLUMNS} FROM instances ORDER BY name")
        else:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM instances WHERE node = ? ORDER BY name", (node,)
            )
        return [_instance(row) for row in rows]
