"""SQLite records of volumes, their legs (AoE exports), assignments and storage maintenance.

A mixin of SqliteStore. Export addresses are allocated here, inside the write transaction: each
storage node owns whole shelves (AoE majors), and a leg takes the lowest free slot on one of
its node's shelves, so no two exports on the segment ever share shelf.slot.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from cloudctl.state.audit import record as record_audit
from cloudctl.state.errors import Conflict, NotFound
from cloudctl.state.models import ExportRecord, Leg, Volume
from cloudctl.state.store import Change

MAX_SLOT = 254  # 255 is the broadcast minor
MAX_SHELF = 65534  # 65535 is the broadcast major


def _allocate_export(conn: sqlite3.Connection, snode: str) -> tuple[int, int]:
    shelves = [
        row[0]
        for row in conn.execute(
            "SELECT shelf FROM shelves WHERE snode = ? ORDER BY shelf", (snode,)
        )
    ]
    for shelf in shelves:
        used = {
            row[0] for row in conn.execute("SELECT slot FROM volume_legs WHERE shelf = ?", (shelf,))
        }
        free = next((slot for slot in range(MAX_SLOT + 1) if slot not in used), None)
        if free is not None:
            return shelf, free
    shelf = conn.execute("SELECT coalesce(max(shelf), 0) + 1 FROM shelves").fetchone()[0]
    if shelf > MAX_SHELF:
        raise Conflict("no free AoE shelf left on this storage network")
    conn.execute("INSERT INTO shelves (shelf, snode) VALUES (?, ?)", (shelf, snode))
    return shelf, 0


def _volume(conn: sqlite3.Connection | Any, name: str) -> Volume:
    row = conn.execute(
        "SELECT name, size, origin, created_at, image FROM volumes WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no volume named {name!r}")
    legs = tuple(
        Leg(*r)
        for r in conn.execute(
            "SELECT snode, shelf, slot, state FROM volume_legs WHERE volume = ? "
            "ORDER BY shelf, slot",
            (name,),
        )
    )
    assigned = tuple(
        r[0]
        for r in conn.execute(
            "SELECT node FROM volume_assignments WHERE volume = ? ORDER BY node", (name,)
        )
    )
    return Volume(row[0], row[1], row[2], legs, assigned, row[3], image=row[4])


def _check_snode(conn: sqlite3.Connection, name: str) -> None:
    row = conn.execute("SELECT role FROM nodes WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no storage node named {name!r}")
    if row[0] != "snode":
        raise Conflict(f"node {name} is a {row[0]}, not a storage node (snode)")


class StorageRecords:
    """Needs `_write(op)` and `_read(sql, args)` from the store it is mixed into."""

    async def _write(self, op: Any) -> Any: ...  # provided by SqliteStore

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]: ...  # provided by SqliteStore

    async def create_volume(
        self,
        name: str,
        size: int,
        snodes: list[str],
        origin: str | None,
        change: Change,
        image: str | None = None,
    ) -> Volume:
        def op(conn: sqlite3.Connection) -> Volume:
            if conn.execute("SELECT 1 FROM volumes WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"a volume named {name} already exists")
            for snode in snodes:
                _check_snode(conn, snode)
            if origin is not None:
                _volume(conn, origin)  # must exist
            if image is not None:
                row = conn.execute(
                    "SELECT disk_size FROM images WHERE name = ?", (image,)
                ).fetchone()
                if row is None:
                    raise NotFound(f"no image named {image!r}")
                if row[0] is None:
                    raise Conflict(
                        f"image {image} has no disk: import one with `image import ... --disk`"
                    )
                if size < row[0]:
                    raise Conflict(
                        f"image {image}'s disk is {row[0]} bytes: the volume must be at least "
                        "that big"
                    )
            conn.execute(
                "INSERT INTO volumes (name, size, origin, created_at, image) "
                "VALUES (?, ?, ?, ?, ?)",
                (name, size, origin, time.time(), image),
            )
            for snode in snodes:
                shelf, slot = _allocate_export(conn, snode)
                conn.execute(
                    "INSERT INTO volume_legs (volume, snode, shelf, slot, state) "
                    "VALUES (?, ?, ?, ?, 'active')",
                    (name, snode, shelf, slot),
                )
            volume = _volume(conn, name)
            record_audit(
                conn,
                change,
                "volume.create",
                f"volume/{name}",
                size=size,
                legs=[leg.device for leg in volume.legs],
                origin=origin,
                image=image,
            )
            return volume

        return await self._write(op)

    async def remove_volume(self, name: str, change: Change) -> Volume:
        def op(conn: sqlite3.Connection) -> Volume:
            volume = _volume(conn, name)
            if volume.assigned:
                raise Conflict(
                    f"volume {name} is assigned to {', '.join(volume.assigned)}: unassign it first"
                )
            user = conn.execute("SELECT name FROM instances WHERE volume = ?", (name,)).fetchone()
            if user is not None:
                raise Conflict(f"volume {name} is used by instance {user[0]}: destroy it first")
            if conn.execute("SELECT 1 FROM volumes WHERE origin = ?", (name,)).fetchone():
                raise Conflict(f"volume {name} has snapshots being created from it")
            conn.execute("DELETE FROM volumes WHERE name = ?", (name,))
            record_audit(conn, change, "volume.delete", f"volume/{name}")
            return volume

        return await self._write(op)

    async def resize_volume(self, name: str, size: int, change: Change) -> Volume:
        def op(conn: sqlite3.Connection) -> Volume:
            volume = _volume(conn, name)
            if size < volume.size:
                raise Conflict(
                    f"volume {name} is {volume.size} bytes; shrinking a block device "
                    "under a filesystem loses data, so only growing is allowed"
                )
            conn.execute("UPDATE volumes SET size = ? WHERE name = ?", (size, name))
            record_audit(conn, change, "volume.resize", f"volume/{name}", old=volume.size, new=size)
            return _volume(conn, name)

        return await self._write(op)

    async def assign_volume(self, name: str, node: str, assign: bool, change: Change) -> Volume:
        def op(conn: sqlite3.Connection) -> Volume:
            _volume(conn, name)
            if not conn.execute("SELECT 1 FROM nodes WHERE name = ?", (node,)).fetchone():
                raise NotFound(f"no node named {node!r}")
            if assign:
                conn.execute(
                    "INSERT OR IGNORE INTO volume_assignments (volume, node) VALUES (?, ?)",
                    (name, node),
                )
            else:
                conn.execute(
                    "DELETE FROM volume_assignments WHERE volume = ? AND node = ?", (name, node)
                )
            record_audit(
                conn,
                change,
                "volume.assign" if assign else "volume.unassign",
                f"volume/{name}",
                node=node,
            )
            return _volume(conn, name)

        return await self._write(op)

    def get_volume(self, name: str) -> Volume | None:
        try:
            return _volume(self._reader_conn(), name)
        except NotFound:
            return None

    def list_volumes(self) -> list[Volume]:
        names = [row[0] for row in self._read("SELECT name FROM volumes ORDER BY name")]
        conn = self._reader_conn()
        return [_volume(conn, name) for name in names]

    def volumes_assigned_to(self, node: str) -> list[Volume]:
        """The volumes `node` may use (an index read: boot configs are rendered per request)."""
        names = self._read(
            "SELECT volume FROM volume_assignments WHERE node = ? ORDER BY volume", (node,)
        )
        conn = self._reader_conn()
        return [_volume(conn, name) for (name,) in names]

    def exports_for(self, snode: str) -> list[ExportRecord]:
        """Every leg on `snode`, with its ACL; `exported` is false for failed legs, while the
        node is in maintenance (its files stay: the data comes back after maintenance), and
        while no node is assigned the volume (an empty AoE access list would admit everyone)."""
        resting = bool(self._read("SELECT 1 FROM storage_maintenance WHERE snode = ?", (snode,)))
        rows = self._read(
            "SELECT l.volume, l.shelf, l.slot, v.size, v.origin, l.state, v.image, i.disk_sha256 "
            "FROM volume_legs l JOIN volumes v ON v.name = l.volume "
            "LEFT JOIN images i ON i.name = v.image WHERE l.snode = ? ORDER BY l.shelf, l.slot",
            (snode,),
        )
        macs: dict[str, list[str]] = {}
        for volume, mac in self._read(
            "SELECT a.volume, n.mac FROM volume_assignments a JOIN nodes n ON n.name = a.node "
            "JOIN volume_legs l ON l.volume = a.volume WHERE l.snode = ? ORDER BY n.mac",
            (snode,),
        ):
            macs.setdefault(volume, []).append(mac)
        return [
            ExportRecord(
                v,
                shelf,
                slot,
                size,
                origin,
                tuple(macs.get(v, ())),
                exported=not resting and state != "failed" and bool(macs.get(v)),
                image=image,
                image_sha256=image_sha256,
            )
            for v, shelf, slot, size, origin, state, image, image_sha256 in rows
        ]

    # storage maintenance
    async def start_storage_maintenance(self, snode: str, change: Change) -> list[str]:
        """Fail every leg on `snode` if each of its volumes keeps an active leg elsewhere."""

        def op(conn: sqlite3.Connection) -> list[str]:
            _check_snode(conn, snode)
            if conn.execute(
                "SELECT 1 FROM storage_maintenance WHERE snode = ?", (snode,)
            ).fetchone():
                raise Conflict(f"storage node {snode} is already in maintenance")
            at_risk = [
                row[0]
                for row in conn.execute(
                    "SELECT l.volume FROM volume_legs l WHERE l.snode = ? AND NOT EXISTS ("
                    " SELECT 1 FROM volume_legs o WHERE o.volume = l.volume AND o.snode != l.snode"
                    " AND o.state = 'active'"
                    " AND o.snode NOT IN (SELECT snode FROM storage_maintenance))"
                    " ORDER BY l.volume",
                    (snode,),
                )
            ]
            if at_risk:
                raise Conflict(
                    f"refusing maintenance of {snode}: these volumes have no healthy leg on "
                    f"another storage node: {', '.join(at_risk)}"
                )
            volumes = [
                row[0]
                for row in conn.execute(
                    "SELECT volume FROM volume_legs WHERE snode = ? ORDER BY volume", (snode,)
                )
            ]
            conn.execute("UPDATE volume_legs SET state = 'failed' WHERE snode = ?", (snode,))
            conn.execute(
                "INSERT INTO storage_maintenance (snode, started_at) VALUES (?, ?)",
                (snode, time.time()),
            )
            record_audit(conn, change, "storage.maintenance.start", snode, volumes=volumes)
            return volumes

        return await self._write(op)

    async def finish_storage_maintenance(self, snode: str, change: Change) -> list[str]:
        """Leave maintenance: the node's legs are exported again and must resync."""

        def op(conn: sqlite3.Connection) -> list[str]:
            if not conn.execute(
                "DELETE FROM storage_maintenance WHERE snode = ? RETURNING snode", (snode,)
            ).fetchone():
                raise Conflict(f"storage node {snode} is not in maintenance")
            volumes = [
                row[0]
                for row in conn.execute(
                    "SELECT volume FROM volume_legs WHERE snode = ? ORDER BY volume", (snode,)
                )
            ]
            conn.execute("UPDATE volume_legs SET state = 'resyncing' WHERE snode = ?", (snode,))
            record_audit(conn, change, "storage.maintenance.finish", snode, volumes=volumes)
            return volumes

        return await self._write(op)

    async def set_leg_state(self, volume: str, snode: str, state: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE volume_legs SET state = ? WHERE volume = ? AND snode = ?",
                (state, volume, snode),
            )
            if cur.rowcount == 0:
                raise NotFound(f"volume {volume} has no leg on {snode}")

        await self._write(op)

    def storage_in_maintenance(self) -> list[str]:
        return [
            row[0] for row in self._read("SELECT snode FROM storage_maintenance ORDER BY snode")
        ]
