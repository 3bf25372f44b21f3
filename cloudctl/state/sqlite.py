"""SQLite backend of the StateStore: WAL mode, writes through a group-commit writer thread.

Each write is a function run by the writer (writer.py) inside a transaction shared with the
other writes queued at the same time; it returns once that transaction is on disk. Reads use a
second connection on the event-loop thread; WAL lets them run beside the writer.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from cloudctl.inventory import NAME_PREFIX, AddressPool, NodeState, Role
from cloudctl.state.audit import record as record_audit
from cloudctl.state.errors import Conflict, NotFound, StateError
from cloudctl.state.models import AuditEntry, Job, JobState, Lease, Node, ProgressLine
from cloudctl.state.schema import migrate
from cloudctl.state.sqlite_boot import BootRecords
from cloudctl.state.sqlite_instances import InstanceRecords
from cloudctl.state.sqlite_storage import StorageRecords
from cloudctl.state.store import Change, NodeRequest, StateStore
from cloudctl.state.writer import GroupCommitWriter, WriteOp

_NODE_COLUMNS = "name, mac, role, ip, state, created_at, updated_at, segment"
_LEASE_COLUMNS = "mac, ip, expires, hostname, updated_at"
_JOB_COLUMNS = (
    "id, kind, state, params, result, error, actor, reason, created_at, started_at, finished_at"
)


def _connect(path: Path, *, for_thread: bool = False) -> sqlite3.Connection:
    # The writer is opened here but used only by the writer thread from then on.
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=30.0, check_same_thread=not for_thread
    )
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _node(row: tuple) -> Node:
    name, mac, role, ip, state, created_at, updated_at, segment = row
    return Node(
        segment=segment,
        name=name,
        mac=mac,
        role=Role(role) if role else None,
        ip=ipaddress.IPv4Address(ip) if ip is not None else None,
        state=NodeState(state),
        created_at=created_at,
        updated_at=updated_at,
    )


def _lease(row: tuple) -> Lease:
    mac, ip, expires, hostname, updated_at = row
    return Lease(mac, ipaddress.IPv4Address(ip), expires, hostname, updated_at)


def discovered_name(mac: str) -> str:
    return "mac-" + mac.replace(":", "")


def _job(row: tuple) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        state=JobState(row[2]),
        params=json.loads(row[3]),
        result=json.loads(row[4]) if row[4] is not None else None,
        error=row[5],
        actor=row[6],
        reason=row[7],
        created_at=row[8],
        started_at=row[9],
        finished_at=row[10],
    )


def _cursor(conn: sqlite3.Connection, name: str, default: int) -> int:
    row = conn.execute("SELECT value FROM cursors WHERE name = ?", (name,)).fetchone()
    return row[0] if row else default


def _set_cursor(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute(
        "INSERT INTO cursors (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )


def _node_row(conn: sqlite3.Connection, name: str) -> tuple:
    row = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no node named {name!r}")
    return row


def _next_name(conn: sqlite3.Connection, role: Role) -> str:
    prefix = NAME_PREFIX[role]
    number = _cursor(conn, f"name:{prefix}", 1)
    while conn.execute("SELECT 1 FROM nodes WHERE name = ?", (f"{prefix}{number}",)).fetchone():
        number += 1
    _set_cursor(conn, f"name:{prefix}", number + 1)
    return f"{prefix}{number}"


def _allocate(conn: sqlite3.Connection, request: NodeRequest, pool: AddressPool) -> tuple[str, int]:
    """Name and fixed address for a node being registered: the requested ones, or the next free."""
    if request.name is not None:
        row = conn.execute("SELECT mac FROM nodes WHERE name = ?", (request.name,)).fetchone()
        if row and row[0] != request.mac:
            raise Conflict(f"a node named {request.name} already exists")
        name = request.name
    else:
        name = _next_name(conn, request.role)
    if request.ip is not None:
        row = conn.execute("SELECT name FROM nodes WHERE ip = ?", (int(request.ip),)).fetchone()
        if row:
            raise Conflict(f"IP {request.ip} is already the address of node {row[0]}")
        return name, int(request.ip)
    return name, _next_ip(conn, pool)


def _next_ip(conn: sqlite3.Connection, pool: AddressPool) -> int:
    # A cursor makes allocation O(1) amortised; wrapping around reuses freed addresses.
    start = _cursor(conn, "ip", 0)
    for candidate in pool.candidates(start):
        if not conn.execute("SELECT 1 FROM nodes WHERE ip = ?", (candidate,)).fetchone():
            _set_cursor(conn, "ip", candidate + 1)
            return candidate
    raise Conflict(f"no free address left in {pool.subnet} outside the dynamic range")


class SqliteStore(BootRecords, StorageRecords, InstanceRecords, StateStore):
    def __init__(self, path: Path, *, max_batch: int = 1024) -> None:
        self.path = Path(path)
        self._max_batch = max_batch
        self._writer: GroupCommitWriter | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    # lifecycle
    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the state at {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StateError(f"the state at {self.path} is in use by another cloudctld") from None
        try:
            writer = _connect(self.path, for_thread=True)
            if writer.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise StateError(f"cannot switch {self.path} to WAL mode")
            migrate(writer)
            self._reader = _connect(self.path)
        except sqlite3.Error as exc:
            self._release_lock()
            raise StateError(f"cannot open the state database {self.path}: {exc}") from None
        self._writer = GroupCommitWriter(writer, max_batch=self._max_batch)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _write(self, op: WriteOp) -> Any:
        if self._writer is None:
            raise StateError("the state store is not open")
        return await self._writer.submit(op)

    @property
    def commits(self) -> int:
        return self._writer.commits if self._writer else 0

    # reads
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._reader_conn().execute(sql, args).fetchall()

    def _reader_conn(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StateError("the state store is not open")
        return self._reader

    # nodes
    async def add_node(self, request: NodeRequest, pool: AddressPool, change: Change) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            row = conn.execute(
                "SELECT name, state FROM nodes WHERE mac = ?", (request.mac,)
            ).fetchone()
            if row and row[1] == NodeState.DISCOVERED:
                raise Conflict(
                    f"MAC {request.mac} was discovered as node {row[0]}: accept it with "
                    f"`cloudctl node accept {request.mac} --role {request.role.value}`"
                )
            if row:
                raise Conflict(f"MAC {request.mac} is already registered as node {row[0]}")
            name, ip = _allocate(conn, request, pool)
            now = time.time()
            conn.execute(
                "INSERT INTO nodes (name, mac, role, ip, state, created_at, updated_at, segment) "
                "VALUES (?, ?, ?, ?, 'registered', ?, ?, ?)",
                (name, request.mac, request.role.value, ip, now, now, request.segment),
            )
            node = _node(_node_row(conn, name))
            record_audit(
                conn,
                change,
                "node.add",
                name,
                mac=node.mac,
                role=request.role.value,
                ip=str(node.ip),
            )
            return node

        return await self._write(op)

    async def remove_node(self, name: str, change: Change) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            node = _node(_node_row(conn, name))
            legs = conn.execute(
                "SELECT count(*) FROM volume_legs WHERE snode = ?", (name,)
            ).fetchone()[0]
            if legs:
                raise Conflict(f"storage node {name} holds {legs} volume legs: move or delete them")
            used = [
                r[0]
                for r in conn.execute(
                    "SELECT volume FROM volume_assignments WHERE node = ? ORDER BY volume", (name,)
                )
            ]
            if used:
                raise Conflict(f"node {name} is assigned volumes {', '.join(used)}: unassign first")
            hosted = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM instances WHERE node = ? ORDER BY name", (name,)
                )
            ]
            if hosted:
                raise Conflict(
                    f"node {name} runs instances {', '.join(hosted)}: drain it (or destroy them)"
                )
            conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
            conn.execute("DELETE FROM leases WHERE mac = ?", (node.mac,))
            record_audit(conn, change, "node.remove", name, mac=node.mac, ip=str(node.ip))
            return node

        return await self._write(op)

    async def set_drained(self, name: str, drained: bool, change: Change) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            node = _node(_node_row(conn, name))
            if node.state is NodeState.DISCOVERED:
                raise Conflict(f"node {name} is only discovered: register it before draining")
            if drained and node.state is not NodeState.DRAINED:
                conn.execute(
                    "UPDATE nodes SET state = 'drained', state_before_drain = state, "
                    "updated_at = ? WHERE name = ?",
                    (time.time(), name),
                )
            elif not drained and node.state is NodeState.DRAINED:
                conn.execute(
                    "UPDATE nodes SET state = coalesce(state_before_drain, 'registered'), "
                    "state_before_drain = NULL, updated_at = ? WHERE name = ?",
                    (time.time(), name),
                )
            record_audit(conn, change, "node.drain" if drained else "node.undrain", name)
            return _node(_node_row(conn, name))

        return await self._write(op)

    async def set_segment(self, name: str, segment: str | None, change: Change) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            node = _node(_node_row(conn, name))
            conn.execute(
                "UPDATE nodes SET segment = ?, updated_at = ? WHERE name = ?",
                (segment, time.time(), name),
            )
            record_audit(conn, change, "node.segment", name, segment=segment, was=node.segment)
            return _node(_node_row(conn, name))

        return await self._write(op)

    async def accept_node(
        self, mac: str, request: NodeRequest, pool: AddressPool, change: Change
    ) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            row = conn.execute("SELECT name, state FROM nodes WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                raise NotFound(f"no discovered node with MAC {mac}")
            if row[1] != NodeState.DISCOVERED:
                raise Conflict(f"MAC {mac} is already registered as node {row[0]}")
            name, ip = _allocate(conn, request, pool)
            conn.execute(
                "UPDATE nodes SET name = ?, role = ?, ip = ?, state = 'registered', "
                "updated_at = ?, segment = ? WHERE mac = ?",
                (name, request.role.value, ip, time.time(), request.segment, mac),
            )
            node = _node(_node_row(conn, name))
            record_audit(
                conn, change, "node.accept", name, mac=mac, role=request.role.value, ip=str(node.ip)
            )
            return node

        return await self._write(op)

    async def record_discovered(self, mac: str) -> Node:
        def op(conn: sqlite3.Connection) -> Node:
            row = conn.execute(
                f"SELECT {_NODE_COLUMNS} FROM nodes WHERE mac = ?", (mac,)
            ).fetchone()
            if row:
                return _node(row)
            now = time.time()
            name = discovered_name(mac)
            conn.execute(
                "INSERT INTO nodes (name, mac, state, created_at, updated_at) "
                "VALUES (?, ?, 'discovered', ?, ?)",
                (name, mac, now, now),
            )
            record_audit(
                conn,
                Change("dhcp", "unknown MAC asked for an address"),
                "node.discover",
                name,
                mac=mac,
            )
            return _node(_node_row(conn, name))

        return await self._write(op)

    def node_by_ip(self, ip: ipaddress.IPv4Address) -> Node | None:
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE ip = ?", (int(ip),))
        return _node(rows[0]) if rows else None

    # DHCP leases
    async def bind_lease(
        self, mac: str, ip: ipaddress.IPv4Address, expires: float, hostname: str | None
    ) -> Lease:
        await self.bind_leases([(mac, ip, expires, hostname)])
        lease = self.lease_by_mac(mac)
        assert lease is not None
        return lease

    async def bind_leases(
        self, leases: list[tuple[str, ipaddress.IPv4Address, float, str | None]]
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            # REPLACE removes every row that conflicts on mac or on ip: the client's old lease
            # and any other holder of this address, in one statement.
            conn.executemany(
                "INSERT OR REPLACE INTO leases (mac, ip, expires, hostname, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(mac, int(ip), expires, hostname, now) for mac, ip, expires, hostname in leases],
            )

        await self._write(op)

    async def end_lease(self, mac: str, at: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE leases SET expires = min(expires, ?), updated_at = ? WHERE mac = ?",
                (at, time.time(), mac),
            )

        await self._write(op)

    async def decline_address(self, ip: ipaddress.IPv4Address, until: float, mac: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO declined_addresses (ip, until, mac) VALUES (?, ?, ?) "
                "ON CONFLICT (ip) DO UPDATE SET until = excluded.until, mac = excluded.mac",
                (int(ip), until, mac),
            )
            conn.execute("DELETE FROM leases WHERE ip = ? AND mac = ?", (int(ip), mac))

        await self._write(op)

    def lease_by_mac(self, mac: str) -> Lease | None:
        rows = self._read(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE mac = ?", (mac,))
        return _lease(rows[0]) if rows else None

    def lease_by_ip(self, ip: ipaddress.IPv4Address) -> Lease | None:
        rows = self._read(f"SELECT {_LEASE_COLUMNS} FROM leases WHERE ip = ?", (int(ip),))
        return _lease(rows[0]) if rows else None

    def declined_until(self, ip: ipaddress.IPv4Address) -> float | None:
        rows = self._read("SELECT until FROM declined_addresses WHERE ip = ?", (int(ip),))
        return rows[0][0] if rows else None

    def list_leases(self) -> list[Lease]:
        return [
            _lease(row) for row in self._read(f"SELECT {_LEASE_COLUMNS} FROM leases ORDER BY ip")
        ]

    def get_node(self, name: str) -> Node | None:
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,))
        return _node(rows[0]) if rows else None

    def node_by_mac(self, mac: str) -> Node | None:
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE mac = ?", (mac,))
        return _node(rows[0]) if rows else None

    def list_nodes(self, *, role: Role | None = None, state: NodeState | None = None) -> list[Node]:
        sql, args = f"SELECT {_NODE_COLUMNS} FROM nodes WHERE 1", []
        if role is not None:
            sql += " AND role = ?"
            args.append(role.value)
        if state is not None:
            sql += " AND state = ?"
            args.append(state.value)
        return [_node(row) for row in self._read(sql + " ORDER BY id", tuple(args))]

    def count_nodes(self) -> int:
        return self._read("SELECT count(*) FROM nodes")[0][0]

    # audit
    def last_change(self) -> int:
        return self._read("SELECT coalesce(max(id), 0) FROM audit")[0][0]

    def list_audit(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        columns = "id, at, actor, action, target, reason, detail"
        if target is None:
            rows = self._read(f"SELECT {columns} FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._read(
                f"SELECT {columns} FROM audit WHERE target = ? ORDER BY id DESC LIMIT ?",
                (target, limit),
            )
        return [AuditEntry(*row[:6], detail=json.loads(row[6])) for row in rows]

    # jobs
    async def create_job(self, kind: str, params: dict[str, Any], change: Change) -> Job:
        def op(conn: sqlite3.Connection) -> Job:
            cur = conn.execute(
                "INSERT INTO jobs (kind, state, params, actor, reason, created_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?)",
                (kind, json.dumps(params), change.actor, change.reason, time.time()),
            )
            record_audit(
                conn, change, "job.create", f"job/{cur.lastrowid}", kind=kind, params=params
            )
            return _job(
                conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (cur.lastrowid,)
                ).fetchone()
            )

        return await self._write(op)

    async def set_job_state(
        self, job_id: int, state: JobState, *, result: Any = None, error: str | None = None
    ) -> Job:
        def op(conn: sqlite3.Connection) -> Job:
            now = time.time()
            conn.execute(
                "UPDATE jobs SET state = ?, result = ?, error = ?, "
                "started_at = CASE WHEN ? = 'running' THEN ? ELSE started_at END, "
                "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
                (
                    state.value,
                    json.dumps(result) if result is not None else None,
                    error,
                    state.value,
                    now,
                    state.finished,
                    now,
                    job_id,
                ),
            )
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id}")
            return _job(row)

        return await self._write(op)

    async def add_progress(self, job_id: int, line: str) -> ProgressLine:
        def op(conn: sqlite3.Connection) -> ProgressLine:
            seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM job_progress WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            now = time.time()
            conn.execute(
                "INSERT INTO job_progress (job_id, seq, at, line) VALUES (?, ?, ?, ?)",
                (job_id, seq, now, line),
            )
            return ProgressLine(job_id, seq, now, line)

        return await self._write(op)

    async def fail_unfinished_jobs(self, error: str) -> list[int]:
        def op(conn: sqlite3.Connection) -> list[int]:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY id"
                )
            ]
            conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? "
                "WHERE state IN ('queued', 'running')",
                (error, time.time()),
            )
            return ids

        return await self._write(op)

    def get_job(self, job_id: int) -> Job | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, *, limit: int = 50) -> list[Job]:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [_job(row) for row in rows]

    def job_progress(self, job_id: int, *, after: int = 0) -> list[ProgressLine]:
        rows = self._read(
            "SELECT job_id, seq, at, line FROM job_progress WHERE job_id = ? AND seq > ? "
            "ORDER BY seq",
            (job_id, after),
        )
        return [ProgressLine(*row) for row in rows]
