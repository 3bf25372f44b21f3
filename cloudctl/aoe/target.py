"""The AoE target server: one process serves many file-backed exports on one or more interfaces
through AF_PACKET sockets (ethertype 0x88A2) on the asyncio loop. Owns the sockets, the backing
stores, the live export set and group commit; every protocol decision stays in responder.py.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import logging
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudctl.aoe import ata
from cloudctl.aoe.backing import BackingError, CommitGroup, FileBlockStore
from cloudctl.aoe.codec import (
    ETHERTYPE_AOE,
    HEADER_LEN,
    AoeCodecError,
    AoeFrame,
    ReserveCommand,
    ReserveReleaseArg,
    encode_frame,
    format_mac,
    max_sectors_for_mtu,
    parse_mac,
)
from cloudctl.aoe.responder import AoeConfigError, Export, Responder

__all__ = [
    "DEFAULT_BUFFER_COUNT",
    "AoeTarget",
    "AoeTargetError",
    "ExportSpec",
    "InterfaceInfo",
    "TargetStats",
]

log = logging.getLogger(__name__)

# Requests one initiator may keep in flight. The Linux initiator caps its window at its
# aoe_maxout (64) and starts at half of what we advertise; vblade advertises 16. A deeper window
# lets more WRITEs share one fdatasync. The receive buffer below queues 64 full jumbo frames
# from each of several initiators.
DEFAULT_BUFFER_COUNT = 64
# Frames handled per reader wakeup before answering and yielding: the bound on a group commit
# and on how long one busy interface can hold the loop.
MAX_BATCH = 256
RECEIVE_BUFFER_BYTES = 8 << 20
SEND_BUFFER_BYTES = 4 << 20
FRAME_BUFFER_BYTES = 64 << 10  # larger than any frame at any MTU: nothing is ever truncated
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SIOCGIFMTU = 0x8921
# Byte offsets in an ATA answer, patched when a group commit fails after the answer was built.
_ERROR_AT = HEADER_LEN + 1
_COUNT_AT = HEADER_LEN + 2
_STATUS_AT = HEADER_LEN + 3
# Source of the frame that re-installs a reservation into a rebuilt responder (never sent).
_REPLAY_SOURCE = bytes.fromhex("020000000000")


class AoeTargetError(Exception):
    """The target cannot start or apply an export set; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """One export as configured: `eSHELF.SLOT` backed by `path` (a file or block device; its
    size is the export's). `allowed_macs` None serves every host; otherwise only those MACs get
    any answer (discovery included)."""

    shelf: int
    slot: int
    path: Path
    allowed_macs: frozenset[str] | None = None
    config_string: bytes = b""
    read_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if isinstance(self.config_string, str):
            object.__setattr__(self, "config_string", self.config_string.encode())
        if self.allowed_macs is not None:
            try:
                macs = frozenset(format_mac(parse_mac(m)) for m in self.allowed_macs)
            except AoeCodecError as exc:
                raise AoeTargetError(f"e{self.shelf}.{self.slot} allowed_macs: {exc}") from None
            if not macs:
                raise AoeTargetError(
                    f"e{self.shelf}.{self.slot}: allowed_macs is empty (None serves every host)"
                )
            object.__setattr__(self, "allowed_macs", macs)

    @property
    def address(self) -> tuple[int, int]:
        return (self.shelf, self.slot)

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"


@dataclass(frozen=True, slots=True)
class TargetStats:
    """Counters since start, summed over interfaces and export-set changes. `received`,
    `handled`, `ignored`, `dropped` (malformed), `denied` (ACL) and `errors` (answers carrying an
    error) come from the responders; `sent` counts answers handed to the kernel, `send_errors`
    answers it refused, `commits` fdatasync calls, `commit_failures` failed ones (those writes
    were answered with an ATA error), `batches` reader wakeups that found frames."""

    received: int = 0
    handled: int = 0
    ignored: int = 0
    dropped: int = 0
    denied: int = 0
    errors: int = 0
    sent: int = 0
    send_errors: int = 0
    commits: int = 0
    commit_failures: int = 0
    batches: int = 0
    largest_batch: int = 0
    crashes: int = 0


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    mac: str
    mtu: int
    max_sectors: int


_RESPONDER_FIELDS = ("received", "handled", "ignored", "dropped", "denied", "errors")


class _Port:
    """One interface: its socket, receive buffer, responder and the answers it could not send
    yet (kept in order while the socket's send buffer is full; reading pauses meanwhile)."""

    def __init__(self, name: str, sock: socket.socket, mac: bytes, mtu: int) -> None:
        self.name = name
        self.sock = sock
        self.mac = mac
        self.mtu = mtu
        self.responder: Responder | None = None
        self.buf = bytearray(FRAME_BUFFER_BYTES)
        self.view = memoryview(self.buf)
        self.backlog: collections.deque[bytes | bytearray] = collections.deque()
        self.paused = False  # reading stops while the backlog waits for the socket
        # Responder counters of retired responders, minus the new one's start-up replays.
        self.base = dict.fromkeys(_RESPONDER_FIELDS, 0)
        self.sent = self.send_errors = self.batches = self.largest_batch = self.crashes = 0

    @property
    def max_sectors(self) -> int:
        return max_sectors_for_mtu(self.mtu)

    def info(self) -> InterfaceInfo:
        return InterfaceInfo(self.name, format_mac(self.mac), self.mtu, self.max_sectors)


class AoeTarget:
    """Serves `exports` on every interface in `interfaces`; `start()`, `update_exports()`,
    `close()` on the running loop. Protocol state that initiators set (config strings, MAC mask
    edits, reservations) is per interface, as with one vblade per interface, and survives
    `update_exports` for exports whose path and matching setting did not change.

    Durability: a WRITE's answer leaves only after its data was pwritten and fdatasynced.
    WRITEs share fdatasyncs (group commit): one commit at a time runs in a worker thread (one
    fdatasync per written file) while the loop goes on receiving, pwriting and answering other
    requests; the WRITEs that arrive meanwhile form the next group, committed as soon as the
    running one ends. Without the thread the loop would sit idle in fdatasync (0.2-2 ms here)
    while the initiator's next frames wait in the socket. The thread only calls fdatasync:
    frames are received, handled and answered on the loop. Other answers go out at once;
    reads use the page cache.
    """

    def __init__(
        self,
        exports: Sequence[ExportSpec],
        interfaces: Sequence[str],
        *,
        buffer_count: int = DEFAULT_BUFFER_COUNT,
        max_batch: int = MAX_BATCH,
        direct: bool = False,
    ) -> None:
        if not interfaces:
            raise AoeTargetError("no interfaces to serve on")
        if len(set(interfaces)) != len(interfaces):
            raise AoeTargetError(f"interfaces listed twice: {', '.join(interfaces)}")
        if not 1 <= buffer_count <= 0xFFFF:
            raise AoeTargetError(f"buffer_count {buffer_count} not in 1..65535")
        if max_batch < 1:
            raise AoeTargetError("max_batch must be at least 1")
        self._specs = _check_specs(exports)
        self._interfaces = tuple(interfaces)
        self._buffer_count = buffer_count
        self._max_batch = max_batch
        self._direct = direct
        self._group = CommitGroup()
        # Write answers (with their port, store and requested count) waiting for a commit that
        # has not started yet, and the running commit.
        self._waiting: list[tuple[_Port, bytes | bytearray, FileBlockStore | None, int]] = []
        self._commit: asyncio.Future[set[FileBlockStore]] | None = None
        self._syncer: concurrent.futures.ThreadPoolExecutor | None = None
        self._stores: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]] = {}
        self._ports: list[_Port] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            raise AoeTargetError("target already started")
        self._loop = asyncio.get_running_loop()
        self._syncer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aoe-commit")
        try:
            self._stores = self._open_stores(self._specs, {})
            for name in self._interfaces:
                self._ports.append(_open_port(name))
            for port in self._ports:
                self._install(port, self._build_responder(port, {}, port.mtu))
                self._loop.add_reader(port.sock, self._on_readable, port)
        except BaseException:
            await self.close()
            raise
        log.info(
            "AoE target serving %s on %s",
            ", ".join(s.name for s in self._specs) or "nothing",
            ", ".join(f"{p.name} ({format_mac(p.mac)}, MTU {p.mtu})" for p in self._ports),
        )

    async def close(self) -> None:
        """Stop reading, finish the commits (their answers still go out), send what is still
        queued if the socket takes it, close everything."""
        for port in self._ports:
            if self._loop is not None:
                self._loop.remove_reader(port.sock)
        await self._settle()  # no reader runs any more: no new writes
        for port in self._ports:
            if self._loop is not None:
                self._loop.remove_writer(port.sock)
            while port.backlog:
                try:
                    port.sock.send(port.backlog.popleft())
                except OSError:
                    break
            port.sock.close()
        self._ports = []
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
            self._syncer = None
        self._group.commit()
        for _, store in self._stores.values():
            store.close()
        self._stores = {}
        self._loop = None

    async def update_exports(self, specs: Sequence[ExportSpec]) -> None:
        """Swap the export set without a restart: new volumes, removed volumes, ACL and config
        string changes, grown files, and a changed interface MTU take effect at once. On error
        nothing changes."""
        if self._loop is None:
            raise AoeTargetError("target not started")
        new_specs = _check_specs(specs)
        old_stores = self._stores
        stores = self._open_stores(new_specs, old_stores)
        try:
            mtus = [_interface_mtu(port.sock, port.name) for port in self._ports]
            previous = {key: spec for key, (spec, _) in old_stores.items()}
            self._stores = stores
            responders = [
                self._build_responder(port, previous, mtu)
                for port, mtu in zip(self._ports, mtus, strict=True)
            ]
        except BaseException:
            self._stores = old_stores
            _close_unshared(stores, old_stores)
            raise
        for port, responder, mtu in zip(self._ports, responders, mtus, strict=True):
            port.mtu = mtu
            self._install(port, responder)
        self._specs = new_specs
        # Writes to a removed store may still wait for their fdatasync on its descriptor.
        await self._settle(rounds=2)
        _close_unshared(old_stores, stores)
        log.info("AoE exports now %s", ", ".join(s.name for s in new_specs) or "none")

    # --- queries ------------------------------------------------------------------------------

    @property
    def exports(self) -> tuple[ExportSpec, ...]:
        return self._specs

    def interfaces(self) -> list[InterfaceInfo]:
        return [port.info() for port in self._ports]

    def stats(self) -> TargetStats:
        totals = dict.fromkeys((f.name for f in dataclasses.fields(TargetStats)), 0)
        for port in self._ports:
            assert port.responder is not None
            current = port.responder.stats()
            for field in _RESPONDER_FIELDS:
                totals[field] += getattr(current, field) - port.base[field]
            totals["sent"] += port.sent
            totals["send_errors"] += port.send_errors
            totals["batches"] += port.batches
            totals["largest_batch"] = max(totals["largest_batch"], port.largest_batch)
            totals["crashes"] += port.crashes
        totals["commits"] = self._group.commits
        totals["commit_failures"] = self._group.failures
        return TargetStats(**totals)

    # --- the hot path -------------------------------------------------------------------------

    def _on_readable(self, port: _Port) -> None:
        sock, buf, view = port.sock, port.buf, port.view
        recv_into, sock_send = sock.recv_into, sock.send
        assert port.responder is not None
        handle = port.responder.handle
        group, waiting = self._group, self._waiting
        frames = sent = 0
        while frames < self._max_batch and not port.paused:
            try:
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ENETDOWN while the link flaps: retry next wakeup
                log.warning("AoE receive on %s failed: %s", port.name, exc)
                break
            frames += 1
            writes = group.writes
            try:
                answers = handle(view[:n])
            except Exception:  # handle() promises not to raise; a bug must not stop the target
                port.crashes += 1
                log.exception("AoE responder failed on a %d-byte frame from %s", n, port.name)
                continue
            if group.writes != writes:
                # A WRITE reached the page cache: its answer waits for a group commit.
                count = buf[_COUNT_AT]
                waiting.extend((port, answer, group.last_store, count) for answer in answers)
                continue
            for answer in answers:
                if port.backlog:
                    self._send(port, answer)
                    continue
                # The common case inline: this loop runs once per frame.
                try:
                    sock_send(answer)
                    sent += 1
                except OSError:
                    self._send(port, answer)  # queues it or counts the error
        port.sent += sent
        if frames:
            port.batches += 1
            if frames > port.largest_batch:
                port.largest_batch = frames
        if waiting and self._commit is None:
            self._start_commit()

    def _start_commit(self) -> None:
        assert self._loop is not None and self._syncer is not None
        answers, self._waiting = self._waiting, []
        stores = self._group.take()  # writes from now on wait for the next commit
        commit = self._loop.run_in_executor(self._syncer, self._group.sync, stores)
        commit.add_done_callback(lambda done: self._committed(done, answers))
        self._commit = commit

    def _committed(
        self,
        commit: asyncio.Future[set[FileBlockStore]],
        answers: list[tuple[_Port, bytes | bytearray, FileBlockStore | None, int]],
    ) -> None:
        self._commit = None
        try:
            failed = commit.result()
        except BaseException:  # the worker died (interpreter shutdown): nothing is known durable
            failed = {store for _, _, store, _ in answers if store is not None}
        for port, answer, store, count in answers:
            if store in failed:
                _fail_write_answer(answer, count)
            self._send(port, answer)
        if self._waiting:
            self._start_commit()

    async def _settle(self, rounds: int = 1 << 30) -> None:
        """Wait for commits until no write answer waits for one, or `rounds` commits ended.
        Two rounds cover every write made before the call: the running commit, and the one
        that takes what waited meanwhile (more could starve under a steady stream of writes)."""
        for _ in range(rounds):
            if self._commit is None:
                if not self._waiting:
                    return
                self._start_commit()
            commit = self._commit
            assert commit is not None
            with contextlib.suppress(Exception):
                await commit
            await asyncio.sleep(0)  # let _committed run

    def _send(self, port: _Port, answer: bytes | bytearray) -> None:
        if port.backlog:
            port.backlog.append(answer)  # keep answers in order behind the queued ones
            return
        try:
            port.sock.send(answer)
        except BlockingIOError:
            port.backlog.append(answer)
            self._pause(port)
        except OSError as exc:
            # ENOBUFS (the device queue dropped it), ENETDOWN...: the initiator retransmits.
            port.send_errors += 1
            log.debug("AoE send on %s failed: %s", port.name, exc)
        else:
            port.sent += 1

    def _pause(self, port: _Port) -> None:
        assert self._loop is not None
        port.paused = True
        self._loop.remove_reader(port.sock)
        self._loop.add_writer(port.sock, self._drain, port)

    def _drain(self, port: _Port) -> None:
        while port.backlog:
            try:
                port.sock.send(port.backlog[0])
            except BlockingIOError:
                return
            except OSError:
                port.send_errors += 1
            else:
                port.sent += 1
            port.backlog.popleft()
        port.paused = False
        assert self._loop is not None
        self._loop.remove_writer(port.sock)
        self._loop.add_reader(port.sock, self._on_readable, port)

    # --- export set ---------------------------------------------------------------------------

    def _open_stores(
        self,
        specs: Iterable[ExportSpec],
        current: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]],
    ) -> dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]]:
        """A store per spec: the current one where path and mode are unchanged, else new."""
        stores: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]] = {}
        try:
            for spec in specs:
                old = current.get(spec.address)
                if old is not None and _same_backing(old[0], spec):
                    old[1].refresh_size()
                    stores[spec.address] = (spec, old[1])
                else:
                    store = FileBlockStore(
                        spec.path, read_only=spec.read_only, direct=self._direct, group=self._group
                    )
                    stores[spec.address] = (spec, store)
        except (BackingError, OSError) as exc:
            _close_unshared(stores, current)
            raise AoeTargetError(str(exc)) from None
        return stores

    def _build_responder(
        self, port: _Port, previous: dict[tuple[int, int], ExportSpec], mtu: int
    ) -> Responder:
        """A responder for the current stores on `port`, carrying over the protocol state of
        exports whose backing and relevant settings are unchanged."""
        old = port.responder
        exports = {}
        replays: list[bytes] = []
        for key, (spec, store) in self._stores.items():
            config, allowed = spec.config_string, spec.allowed_macs
            reserve: tuple[bytes, ...] = ()
            before = previous.get(key)
            if old is not None and before is not None and _same_backing(before, spec):
                state = old.export_state(*key)
                if before.config_string == spec.config_string:
                    config = state.config_string
                if before.allowed_macs == spec.allowed_macs:
                    allowed = frozenset(format_mac(m) for m in state.mask_list) or None
                reserve = state.reserve_list
            try:
                export = Export(
                    spec.shelf,
                    spec.slot,
                    store.size_sectors,
                    config_string=config,
                    allowed_macs=allowed,
                    read_only=spec.read_only,
                )
            except AoeConfigError as exc:
                raise AoeTargetError(f"{spec.name}: {exc}") from None
            exports[export] = store
            if reserve:
                replays.append(_reservation_frame(port.mac, export, reserve))
        try:
            responder = Responder(
                exports,
                target_mac=port.mac,
                max_sectors_per_frame=max_sectors_for_mtu(mtu),
                buffer_count=self._buffer_count,
            )
        except (AoeConfigError, AoeCodecError) as exc:
            raise AoeTargetError(f"{port.name}: {exc}") from None
        # The responder has no setter for reservations: re-install them the way an initiator
        # would, then count from here.
        for frame in replays:
            responder.handle(frame)
        return responder

    def _install(self, port: _Port, responder: Responder) -> None:
        old = port.responder
        if old is not None:
            retired = old.stats()
            for field in _RESPONDER_FIELDS:
                port.base[field] -= getattr(retired, field)
        fresh = responder.stats()
        for field in _RESPONDER_FIELDS:
            port.base[field] += getattr(fresh, field)
        port.responder = responder


def _check_specs(specs: Iterable[ExportSpec]) -> tuple[ExportSpec, ...]:
    seen: dict[tuple[int, int], ExportSpec] = {}
    for spec in specs:
        if not isinstance(spec, ExportSpec):
            raise AoeTargetError(f"{spec!r} is not an ExportSpec")
        if spec.address in seen:
            raise AoeTargetError(f"two exports at {spec.name}")
        seen[spec.address] = spec
    return tuple(seen.values())


def _same_backing(a: ExportSpec, b: ExportSpec) -> bool:
    return a.path == b.path and a.read_only == b.read_only


def _close_unshared(
    stores: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]],
    keep: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]],
) -> None:
    kept = {id(store) for _, store in keep.values()}
    for _, store in stores.values():
        if id(store) not in kept:
            store.close()


def _reservation_frame(mac: bytes, export: Export, reserve: tuple[bytes, ...]) -> bytes:
    allowed = sorted(export.allowed_macs or ())
    src = allowed[0] if allowed else _REPLAY_SOURCE
    assert isinstance(src, bytes)
    arg = ReserveReleaseArg(ReserveCommand.FORCE_SET, reserve)
    return encode_frame(AoeFrame(mac, src, export.shelf, export.slot, 0, arg))


def _fail_write_answer(answer: bytes | bytearray, count: int) -> None:
    # The data may not be on stable storage: turn the acknowledgement into an ATA error, with
    # the registers the responder uses for a failed write.
    assert isinstance(answer, bytearray)
    answer[_ERROR_AT] = ata.ERROR_ABRT
    answer[_COUNT_AT] = count
    answer[_STATUS_AT] = ata.STATUS_DRDY | ata.STATUS_ERR


def _open_port(name: str) -> _Port:
    kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    try:
        sock = socket.socket(socket.AF_PACKET, kind, socket.htons(ETHERTYPE_AOE))
    except PermissionError:
        raise AoeTargetError("AF_PACKET sockets need root (or CAP_NET_RAW)") from None
    try:
        try:
            sock.bind((name, ETHERTYPE_AOE))
        except OSError as exc:
            raise AoeTargetError(f"cannot serve AoE on {name!r}: {exc.strerror}") from None
        _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        mac = sock.getsockname()[4]
        if len(mac) != 6 or mac == bytes(6):
            raise AoeTargetError(f"{name} has no Ethernet address")
        return _Port(name, sock, mac, _interface_mtu(sock, name))
    except BaseException:
        sock.close()
        raise


def _grow_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: past net.core.[rw]mem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _interface_mtu(sock: socket.socket, name: str) -> int:
    """The MTU of `name` in the socket's own network namespace.

    Asked through the socket (SIOCGIFMTU) rather than /sys/class/net/NAME/mtu: /sys shows the
    namespace it was mounted in, which for a process that entered a namespace with setns (not
    `ip netns exec`) is another one, where NAME may exist with another MTU.
    """
    request = struct.pack("16si12x", name.encode()[:15], 0)
    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, request)
    except OSError as exc:
        raise AoeTargetError(f"cannot read the MTU of {name}: {exc.strerror}") from None
    mtu = struct.unpack_from("16si", reply)[1]
    try:
        max_sectors_for_mtu(mtu)
    except AoeCodecError as exc:
        raise AoeTargetError(f"{name}: {exc}") from None
    return mtu
