"""The AoE target server: one process serves many file-backed exports on one or more interfaces
through AF_PACKET sockets (ethertype 0x88A2). Owns the backing stores, the live export set and the
lifecycle; frames move in ports.py's threads, every protocol decision stays in responder.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudctl.aoe.backing import BackingError, CommitGroup, FileBlockStore
from cloudctl.aoe.codec import (
    AoeCodecError,
    AoeFrame,
    ReserveCommand,
    ReserveReleaseArg,
    encode_frame,
    format_mac,
    max_sectors_for_mtu,
    parse_mac,
)
from cloudctl.aoe.ports import NATIVE, GroupCommitter, Port, PortError, interface_mtu, open_port
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
# lets more WRITEs share one fdatasync. The receive buffer (ports.py) queues 64 full jumbo
# frames from each of several initiators.
DEFAULT_BUFFER_COUNT = 64
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
    were answered with an ATA error), `batches` group commits (commit-thread cycles),
    `largest_batch` the most WRITE answers one of them carried, `commit_seconds` their summed
    time from taking the group to its last answer sent, `crashes` failures of our own code
    caught in a thread (logged with a traceback; the thread serves on)."""

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
    commit_seconds: float = 0.0
    crashes: int = 0


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    name: str
    mac: str
    mtu: int
    max_sectors: int


_RESPONDER_FIELDS = ("received", "handled", "ignored", "dropped", "denied", "errors")


class AoeTarget:
    """Serves `exports` on every interface in `interfaces`; `start()`, `update_exports()`,
    `close()` on the running loop. Protocol state that initiators set (config strings, MAC mask
    edits, reservations) is per interface, as with one vblade per interface, and survives
    `update_exports` for exports whose path and matching setting did not change.

    Threads (ports.py), as vblade does it: each interface has a reader thread blocked in recv
    that hands each frame to its responder and sends the answer; the asyncio loop only starts,
    reconfigures and stops them. With `native` (the default where _fastio.c is built) the
    reader waits in C, answers in-range READs and queues in-range WRITEs there, and hands every
    other frame to the responder. One lock (the I/O lock) is held while a responder handles a
    frame, while the commit thread takes its group, and while the export set is swapped, so
    responders and stores are only ever used by one thread at a time.

    Durability: a WRITE's answer leaves only after its data was pwritten and fdatasynced.
    WRITEs share fdatasyncs (group commit): the commit thread takes every waiting WRITE answer
    (pwritev of the queued data under the lock), fdatasyncs outside it while the readers go on,
    then sends those answers itself; WRITEs that arrive meanwhile form the next group. Other
    answers go out at once from the reader; reads use the page cache.
    """

    def __init__(
        self,
        exports: Sequence[ExportSpec],
        interfaces: Sequence[str],
        *,
        buffer_count: int = DEFAULT_BUFFER_COUNT,
        direct: bool = False,
        native: bool = NATIVE,
    ) -> None:
        if not interfaces:
            raise AoeTargetError("no interfaces to serve on")
        if len(set(interfaces)) != len(interfaces):
            raise AoeTargetError(f"interfaces listed twice: {', '.join(interfaces)}")
        if not 1 <= buffer_count <= 0xFFFF:
            raise AoeTargetError(f"buffer_count {buffer_count} not in 1..65535")
        self._specs = _check_specs(exports)
        self._interfaces = tuple(interfaces)
        self._buffer_count = buffer_count
        self._direct = direct
        self._native = native  # READs answered in C (ports.py) where it is built
        self._group = CommitGroup()
        self._lock = threading.Lock()  # the I/O lock (class docstring)
        self._committer = GroupCommitter(self._lock, self._group)
        self._stores: dict[tuple[int, int], tuple[ExportSpec, FileBlockStore]] = {}
        self._ports: list[Port] = []
        self._bases: dict[str, dict[str, int]] = {}
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            raise AoeTargetError("target already started")
        self._started = True
        try:
            self._stores = self._open_stores(self._specs, {})
            for name in self._interfaces:
                try:
                    self._ports.append(open_port(name, native=self._native))
                except PortError as exc:
                    raise AoeTargetError(str(exc)) from None
            with self._lock:
                for port in self._ports:
                    self._install(port, self._build_responder(port, {}, port.mtu))
            self._committer.start()
            for port in self._ports:
                port.start(self._lock, self._group, self._committer)
        except BaseException:
            await self.close()
            raise
        log.info(
            "AoE target serving %s on %s%s",
            ", ".join(s.name for s in self._specs) or "nothing",
            ", ".join(f"{p.name} ({format_mac(p.mac)}, MTU {p.mtu})" for p in self._ports),
            "" if all(p.native is not None for p in self._ports) else " (READs in Python)",
        )

    async def close(self) -> None:
        """Stop the readers, finish the commits (their answers still go out), close
        everything. No thread is left using a socket or a store."""
        await asyncio.to_thread(self._stop_threads)
        for port in self._ports:
            port.sock.close()
        self._ports = []
        self._group.commit()
        for _, store in self._stores.values():
            store.close()
        self._stores = {}
        self._started = False

    def _stop_threads(self) -> None:
        for port in self._ports:
            port.request_stop()  # all at once: each stops within its receive timeout
        for port in self._ports:
            port.stop()
        self._committer.stop()  # no reader runs any more: no new writes

    async def update_exports(self, specs: Sequence[ExportSpec]) -> None:
        """Swap the export set without a restart: new volumes, removed volumes, ACL and config
        string changes, grown files, and a changed interface MTU take effect at once. On error
        nothing changes."""
        if not self._started or not self._ports:
            raise AoeTargetError("target not started")
        new_specs = _check_specs(specs)
        old_stores = self._stores
        stores = self._open_stores(new_specs, old_stores)
        try:
            try:
                mtus = [interface_mtu(port.sock, port.name) for port in self._ports]
            except PortError as exc:
                raise AoeTargetError(str(exc)) from None
            previous = {key: spec for key, (spec, _) in old_stores.items()}
            # Under the I/O lock: no frame is half handled, so the protocol state carried over
            # is the last one, and no frame reaches a responder that is being replaced.
            with self._lock:
                self._stores = stores
                try:
                    responders = [
                        self._build_responder(port, previous, mtu)
                        for port, mtu in zip(self._ports, mtus, strict=True)
                    ]
                except BaseException:
                    self._stores = old_stores
                    raise
                for port, responder, mtu in zip(self._ports, responders, mtus, strict=True):
                    port.mtu = mtu
                    self._install(port, responder)
        except BaseException:
            _close_unshared(stores, old_stores)
            raise
        self._specs = new_specs
        # Writes to a removed store may still wait for their fdatasync on its descriptor.
        await asyncio.to_thread(self._committer.settle, 2)
        _close_unshared(old_stores, stores)
        log.info("AoE exports now %s", ", ".join(s.name for s in new_specs) or "none")

    # --- queries ------------------------------------------------------------------------------

    @property
    def exports(self) -> tuple[ExportSpec, ...]:
        return self._specs

    def interfaces(self) -> list[InterfaceInfo]:
        return [
            InterfaceInfo(p.name, format_mac(p.mac), p.mtu, max_sectors_for_mtu(p.mtu))
            for p in self._ports
        ]

    def stats(self) -> TargetStats:
        totals: dict[str, float] = dict.fromkeys(
            (f.name for f in dataclasses.fields(TargetStats)), 0
        )
        for port in self._ports:
            assert port.responder is not None
            current = port.responder.stats()
            base = self._bases[port.name]
            for field in _RESPONDER_FIELDS:
                totals[field] += getattr(current, field) - base[field]
            native = port.native_counters()  # frames taken in C never reach the responder
            totals["received"] += native["answered"] + native["writes"]
            totals["handled"] += native["answered"] + native["writes"]
            totals["sent"] += port.sent + port.write_sent + native["sent"]
            totals["send_errors"] += port.send_errors + port.write_send_errors
            totals["send_errors"] += native["send_errors"]
            totals["crashes"] += port.crashes
        committer = self._committer
        totals["commits"] = self._group.commits
        totals["commit_failures"] = self._group.failures
        totals["batches"] = committer.groups
        totals["largest_batch"] = committer.largest_group
        totals["commit_seconds"] = round(committer.busy_seconds, 6)
        totals["crashes"] += committer.crashes
        return TargetStats(**totals)  # type: ignore[arg-type]

    def threads_alive(self) -> bool:
        """Whether every reader and the commit thread run (for health checks and tests)."""
        return bool(self._ports) and self._committer.alive and all(p.alive for p in self._ports)

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
        self, port: Port, previous: dict[tuple[int, int], ExportSpec], mtu: int
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

    def _install(self, port: Port, responder: Responder) -> None:
        """Make `responder` the one `port` uses. The caller holds the I/O lock."""
        # Responder counters of retired responders, minus the new one's start-up replays.
        base = self._bases.setdefault(port.name, dict.fromkeys(_RESPONDER_FIELDS, 0))
        old = port.responder
        if old is not None:
            retired = old.stats()
            for field in _RESPONDER_FIELDS:
                base[field] -= getattr(retired, field)
        fresh = responder.stats()
        for field in _RESPONDER_FIELDS:
            base[field] += getattr(fresh, field)
        port.install(responder)


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
