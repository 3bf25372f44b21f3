"""The AoE target's request handler: frames in, answer frames out, for a set of exports. Owns
each export's protocol state (config string, MAC mask list, reserve list) and the counters.
Pure: storage is an injected `BlockStore`; no sockets, clocks or threads (call from one thread).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from cloudctl.aoe import ata
from cloudctl.aoe.backing import BlockStore, MemoryBlockStore
from cloudctl.aoe.codec import (
    AOE_HEADER,
    AOE_VERSION,
    ATA_DATA_OFFSET,
    ATA_HEADER,
    BROADCAST_MAC,
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    ETHERTYPE_AOE,
    FLAG_ERROR,
    FLAG_RESPONSE,
    HEADER_LEN,
    MIN_FRAME_LEN,
    AoeCodecError,
    AoeFrame,
    Arg,
    Command,
    ConfigCommand,
    ErrorCode,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    MaskDirectiveCommand,
    MaskError,
    QueryConfigArg,
    RawArg,
    ReserveCommand,
    ReserveReleaseArg,
    addressed_to,
    decode_frame,
    encode_frame,
    parse_mac,
)
from cloudctl.aoe.export import (
    MASK_LIST_MAX,
    RESERVE_LIST_MAX,
    AoeConfigError,
    Export,
    ExportState,
    ResponderStats,
)

__all__ = [
    "DEFAULT_BUFFER_COUNT",
    "FIRMWARE_VERSION",
    "MASK_LIST_MAX",
    "RESERVE_LIST_MAX",
    "AoeConfigError",
    "BlockStore",
    "Export",
    "ExportState",
    "MemoryBlockStore",
    "Responder",
    "ResponderStats",
]

DEFAULT_BUFFER_COUNT = 16  # requests an initiator may have in flight; vblade's default
FIRMWARE_VERSION = 0x0001

_RESPONSE_VERFLAGS = AOE_VERSION << 4 | FLAG_RESPONSE
_SECTOR = ata.SECTOR_SIZE
_READ = ata.AtaOp.READ
_WRITE = ata.AtaOp.WRITE
_FLUSH = ata.AtaOp.FLUSH
_IDENTIFY = ata.AtaOp.IDENTIFY
_FAILED = ata.STATUS_DRDY | ata.STATUS_ERR
_IDENTIFY_DEVICE = int(ata.AtaCommand.IDENTIFY_DEVICE)
_ATA_COMMAND = int(Command.ATA)
_unpack_header = AOE_HEADER.unpack_from
_pack_header = AOE_HEADER.pack_into
_unpack_ata = ATA_HEADER.unpack_from
_pack_ata = ATA_HEADER.pack_into
# The fast path's views of a request and of its answer's 36 header bytes, little-endian so that
# the LBA (the one little-endian field) is an int while the big-endian fields stay raw bytes:
# dst, src, ethertype, verflags, (error), major+minor, command, tag, aflags, (feature), sector
# count, ATA command, lba0-3, lba4-5, (reserved).
_unpack_request = struct.Struct("<6s6s2sBx3sB4sBxBBIHxx").unpack_from
# dst, source MAC..command (a per-export template), tag, aflags, error, count, status, LBA.
_pack_reply = struct.Struct("<6s14s4sBBBBIHxx").pack_into
_REQUEST_VERFLAGS = AOE_VERSION << 4
_ETHERTYPE_BYTES = ETHERTYPE_AOE.to_bytes(2, "big")
_LBA28 = 0x0FFFFFFF
_IO_LBA_WIDTH = {
    ata.AtaCommand.READ_SECTORS: 28,
    ata.AtaCommand.READ_SECTORS_EXT: 48,
    ata.AtaCommand.WRITE_SECTORS: 28,
    ata.AtaCommand.WRITE_SECTORS_EXT: 48,
}
_pack_prefix = struct.Struct("!HBB3sB").pack
_FAST_READS = frozenset({ata.AtaCommand.READ_SECTORS, ata.AtaCommand.READ_SECTORS_EXT})


class _Target:
    """One export's live state. Dicts serve as ordered sets: lists go on the wire in order."""

    __slots__ = (
        "config",
        "export",
        "identify",
        "key",
        "mask",
        "read_only",
        "readinto",
        "reply_prefix",
        "reserve",
        "shelf",
        "size",
        "slot",
        "store",
    )

    def __init__(self, export: Export, store: BlockStore, mac: bytes) -> None:
        self.export = export
        self.store = store
        self.readinto: Callable[[int, memoryview], int] | None = getattr(store, "readinto", None)
        self.shelf, self.slot, self.size = export.shelf, export.slot, export.size_sectors
        self.read_only = export.read_only
        self.identify = ata.identify_page(export.size_sectors, serial=export.serial)
        self.config = export.config_string
        self.mask: dict[bytes, None] = dict.fromkeys(sorted(export.allowed_macs or ()))
        self.reserve: dict[bytes, None] = {}
        # The fast path's lookup key (major and minor as a frame has them) and its answers'
        # bytes 6-19: our MAC, ethertype, version and R flag, no error, major, minor, ATA.
        self.key = struct.pack("!HB", self.shelf, self.slot)
        self.reply_prefix = mac + _pack_prefix(ETHERTYPE_AOE, _RESPONSE_VERFLAGS, 0, self.key, 0)


class Responder:
    """Answers AoE requests for `exports` (Export -> its BlockStore) from `target_mac`.

    `max_sectors_per_frame` bounds every ATA transfer and is advertised in Query Config; derive
    it from the interface MTU with `codec.max_sectors_for_mtu`. `fast_path=False` sends every
    frame through the general path (same answers, about twice the CPU per READ or WRITE).
    """

    def __init__(
        self,
        exports: Mapping[Export, BlockStore],
        *,
        target_mac: bytes | str,
        max_sectors_per_frame: int,
        buffer_count: int = DEFAULT_BUFFER_COUNT,
        firmware_version: int = FIRMWARE_VERSION,
        fast_path: bool = True,
    ) -> None:
        try:
            mac = parse_mac(target_mac)
        except AoeCodecError as exc:
            raise AoeConfigError(f"target_mac: {exc}") from None
        if mac[0] & 1:
            raise AoeConfigError(f"target_mac {target_mac!r} is a group address")
        if not 1 <= max_sectors_per_frame <= 255:
            raise AoeConfigError(f"max_sectors_per_frame {max_sectors_per_frame} not in 1..255")
        if not 0 <= buffer_count <= 0xFFFF or not 0 <= firmware_version <= 0xFFFF:
            raise AoeConfigError("buffer_count and firmware_version are 16-bit fields")
        self._mac = mac
        self._max_sectors = max_sectors_per_frame
        self._buffer_count = buffer_count
        self._firmware = firmware_version
        self._targets: dict[tuple[int, int], _Target] = {}
        for export, store in exports.items():
            key = (export.shelf, export.slot)
            if key in self._targets:
                raise AoeConfigError(f"two exports at e{key[0]}.{key[1]}")
            self._targets[key] = _Target(export, store, mac)
        self._target_list = tuple(self._targets.values())
        # fast_path=False leaves the lookup empty: every frame takes the general path (the
        # tests compare the two).
        self._by_key = {t.key: t for t in self._target_list} if fast_path else {}
        self._received = self._handled = self._ignored = 0
        self._dropped = self._denied = self._errors = 0

    @property
    def target_mac(self) -> bytes:
        return self._mac

    @property
    def exports(self) -> tuple[Export, ...]:
        return tuple(t.export for t in self._target_list)

    def stats(self) -> ResponderStats:
        return ResponderStats(
            self._received,
            self._handled,
            self._ignored,
            self._dropped,
            self._denied,
            self._errors,
        )

    def export_state(self, shelf: int, slot: int) -> ExportState:
        target = self._targets[(shelf, slot)]
        return ExportState(target.config, tuple(target.mask), tuple(target.reserve))

    def native_table(
        self,
    ) -> tuple[int, list[tuple[int, int, int, int, bytes, bytes, bytes, bool]], dict[int, Any]]:
        """What the C fast path needs: `_fastio.FastPath.set_exports` arguments (the most
        sectors per frame, and the exports whose store reads through a plain descriptor,
        `read_fd`, with their answer template, current MAC mask and reservation, and whether
        WRITEs may be queued in C: writable and not O_DIRECT), and those stores by descriptor
        (the commit thread syncs them). Frames for other exports, and every frame with
        fast_path=False, stay with this responder."""
        exports, stores = [], {}
        for target in self._target_list if self._by_key else ():
            fd = getattr(target.store, "read_fd", -1)
            if fd >= 0:
                writable = not target.read_only and not getattr(target.store, "direct", True)
                exports.append(
                    (
                        target.shelf,
                        target.slot,
                        fd,
                        target.size,
                        target.reply_prefix,
                        b"".join(target.mask),
                        b"".join(target.reserve),
                        writable,
                    )
                )
                stores[fd] = target.store
        return self._max_sectors, exports, stores

    def handle(self, frame: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        """Answer one received Ethernet frame: zero or more frames to send, each at least 60
        bytes (bytes or bytearray, ready for send). Never raises for any frame; `frame` is not
        referenced after the call returns, so a transport may reuse its receive buffer."""
        self._received += 1
        # Fast path: an in-range READ or WRITE from an allowed host, answered with one unpack
        # and one pack. Anything else, errors included, takes the general path below, which
        # gives the same bytes (tests/unit/aoe/test_fastpath.py) at ~2x the cost per frame.
        if len(frame) >= ATA_DATA_OFFSET:
            dst, src, eth, verflags, key, command, tag, aflags, count, cmd, low, high = (
                _unpack_request(frame)
            )
            target = self._by_key.get(key)
            if (
                target is not None
                and verflags == _REQUEST_VERFLAGS
                and not command
                and eth == _ETHERTYPE_BYTES
                and dst == self._mac
                and not src[0] & 1
                and src != self._mac
                and (not target.mask or src in target.mask)
                and (not target.reserve or src in target.reserve)
                and 0 < count <= self._max_sectors
            ):
                width = _IO_LBA_WIDTH.get(cmd)
                if width is not None:
                    lba = (low | high << 32) if width == 48 else low & _LBA28
                    if lba + count <= target.size:
                        answer = self._io(
                            target, frame, cmd, lba, count, src, tag, aflags, low, high
                        )
                        if answer is not None:
                            self._handled += 1
                            return [answer]
        try:
            return self._dispatch(frame)
        except AoeCodecError:
            self._dropped += 1
            return []

    def _io(
        self,
        target: _Target,
        frame: bytes | bytearray | memoryview,
        cmd: int,
        lba: int,
        count: int,
        src: bytes,
        tag: bytes,
        aflags: int,
        low: int,
        high: int,
    ) -> bytearray | None:
        """The fast path's I/O and answer; None sends the frame down the general path (a
        write to a read-only export, missing write data, a store without readinto)."""
        length = count * _SECTOR
        status, error, out_count = ata.STATUS_DRDY, 0, 0
        if cmd in _FAST_READS:
            readinto = target.readinto
            if readinto is None:
                return None
            answer = bytearray(ATA_DATA_OFFSET + length)  # >= 548 bytes: no padding needed
            try:
                with memoryview(answer) as view:
                    done = readinto(lba * _SECTOR, view[ATA_DATA_OFFSET:])
            except OSError:
                done = -1
            if done != length:
                answer = bytearray(MIN_FRAME_LEN)  # never send a half-filled buffer
                status, error, out_count = _FAILED, ata.ERROR_UNC, count
        else:
            end = ATA_DATA_OFFSET + length
            if target.read_only or len(frame) < end:
                return None
            answer = bytearray(MIN_FRAME_LEN)
            try:
                with memoryview(frame) as view:
                    target.store.write(lba * _SECTOR, view[ATA_DATA_OFFSET:end])
            except OSError:
                status, error, out_count = _FAILED, ata.ERROR_ABRT, count
        if error:
            self._errors += 1
        # The LBA field goes back as the request had it (device/head bits included).
        _pack_reply(
            answer, 0, src, target.reply_prefix, tag, aflags, error, out_count, status, low, high
        )
        return answer

    # --- routing ------------------------------------------------------------------------------

    def _dispatch(self, frame: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        n = len(frame)
        if n < HEADER_LEN:
            raise AoeCodecError(f"runt frame of {n} bytes")
        dst, src, ethertype, verflags, _, major, minor, command, tag = _unpack_header(frame)
        if (
            ethertype != ETHERTYPE_AOE
            or verflags & FLAG_RESPONSE  # answering answers would let two targets loop
            or (dst != self._mac and dst != BROADCAST_MAC)
            or src == self._mac
        ):
            self._ignored += 1
            return []
        if src[0] & 1:
            # A group source address is forged or broken; answering it would broadcast.
            raise AoeCodecError("group source address")
        if major == BROADCAST_SHELF or minor == BROADCAST_SLOT:
            return self._broadcast(frame, src, verflags, major, minor, command, tag)
        target = self._targets.get((major, minor))
        if target is None:
            self._ignored += 1
            return []
        if target.mask and src not in target.mask:
            self._denied += 1
            return []
        if verflags >> 4 != AOE_VERSION:
            answers = [self._error(target, src, command, tag, ErrorCode.UNSUPPORTED_VERSION)]
        elif command == _ATA_COMMAND:
            answers = self._ata(target, frame, n, src, tag)
        elif command in _ADMIN:
            answers = _ADMIN[command](self, target, decode_frame(frame), src)
        else:
            answers = [self._error(target, src, command, tag, ErrorCode.UNRECOGNIZED_COMMAND)]
        self._handled += 1
        return answers

    def _broadcast(
        self,
        frame: bytes | bytearray | memoryview,
        src: bytes,
        verflags: int,
        major: int,
        minor: int,
        command: int,
        tag: int,
    ) -> list[bytes | bytearray]:
        # Broadcast is for discovery only: a broadcast write, reserve or mask edit would hit
        # every export this process serves at once.
        if command != Command.QUERY_CONFIG or verflags >> 4 != AOE_VERSION:
            self._ignored += 1
            return []
        request = decode_frame(frame)
        answers: list[bytes | bytearray] = []
        matched = denied = False
        for target in self._target_list:
            if not addressed_to(major, minor, target.shelf, target.slot):
                continue
            if target.mask and src not in target.mask:
                denied = True
                continue
            matched = True
            answers += self._query_config(target, request, src)
        if matched:
            self._handled += 1
        elif denied:
            self._denied += 1
        else:
            self._ignored += 1
        return answers

    # --- ATA: the hot path --------------------------------------------------------------------

    def _ata(
        self, target: _Target, frame: bytes | bytearray | memoryview, n: int, src: bytes, tag: int
    ) -> list[bytes | bytearray]:
        if n < ATA_DATA_OFFSET:
            raise AoeCodecError("truncated ATA argument")
        aflags, _, count, command, lba_low, lba_high, _ = _unpack_ata(frame, HEADER_LEN)
        if target.reserve and src not in target.reserve and command != _IDENTIFY_DEVICE:
            # IDENTIFY stays open (as in vblade) so other hosts can still size the disk.
            return [self._error(target, src, 0, tag, ErrorCode.TARGET_RESERVED, frame)]
        plan = ata.plan_ata(
            command,
            lba_low | lba_high << 32,
            count,
            size_sectors=target.size,
            max_sectors=self._max_sectors,
            read_only=target.read_only,
        )
        op, status, error, out_count = plan.op, plan.status, plan.error, plan.sector_count
        if op == _READ:
            length = plan.count * _SECTOR
            answer = bytearray(max(MIN_FRAME_LEN, ATA_DATA_OFFSET + length))
            if length and not self._read(target, plan.lba * _SECTOR, length, answer):
                answer = bytearray(MIN_FRAME_LEN)  # never send a half-filled buffer
                status, error, out_count = _FAILED, ata.ERROR_UNC, count
        elif op == _WRITE:
            end = ATA_DATA_OFFSET + plan.count * _SECTOR
            if n < end:
                return [self._error(target, src, 0, tag, ErrorCode.BAD_ARGUMENT, frame)]
            answer = bytearray(MIN_FRAME_LEN)
            # The A (async) flag would let us answer before the data is stable; we never do:
            # the answer always follows store.write, which the spec permits.
            try:
                with memoryview(frame) as view:
                    target.store.write(plan.lba * _SECTOR, view[ATA_DATA_OFFSET:end])
            except OSError:
                status, error, out_count = _FAILED, ata.ERROR_ABRT, count
        elif op == _IDENTIFY:
            answer = bytearray(ATA_DATA_OFFSET) + target.identify
        elif op == _FLUSH:
            answer = bytearray(MIN_FRAME_LEN)
            try:
                target.store.flush()
            except OSError:
                status, error, out_count = _FAILED, ata.ERROR_ABRT, count
        else:  # CHECK_POWER, or a plan that already failed
            answer = bytearray(MIN_FRAME_LEN)
        if status & ata.STATUS_ERR:
            self._errors += 1
        _pack_header(
            answer,
            0,
            src,
            self._mac,
            ETHERTYPE_AOE,
            _RESPONSE_VERFLAGS,
            0,
            target.shelf,
            target.slot,
            0,
            tag,
        )
        _pack_ata(answer, HEADER_LEN, aflags, error, out_count, status, lba_low, lba_high, 0)
        return [answer]

    @staticmethod
    def _read(target: _Target, offset: int, length: int, answer: bytearray) -> bool:
        """Fill answer[36:36+length] from the store; False if the store failed or came short."""
        try:
            if target.readinto is not None:
                with memoryview(answer) as view:
                    got = target.readinto(offset, view[ATA_DATA_OFFSET : ATA_DATA_OFFSET + length])
                return got == length
            data = target.store.read(offset, length)
        except OSError:
            return False
        if len(data) != length:
            return False
        answer[ATA_DATA_OFFSET : ATA_DATA_OFFSET + length] = data
        return True

    # --- Query Config, MAC Mask List, Reserve/Release -----------------------------------------

    def _answer(self, target: _Target, src: bytes, tag: int, arg: Arg, error: int = 0) -> bytes:
        flags = FLAG_RESPONSE
        if error:
            flags |= FLAG_ERROR
            self._errors += 1
        reply = AoeFrame(src, self._mac, target.shelf, target.slot, tag, arg, flags, error)
        return encode_frame(reply)

    def _error(
        self,
        target: _Target,
        src: bytes,
        command: int,
        tag: int,
        error: int,
        frame: bytes | bytearray | memoryview | None = None,
    ) -> bytes:
        # An ATA request's argument header is echoed so the initiator can match it up.
        echo = bytes(frame[HEADER_LEN:ATA_DATA_OFFSET]) if frame is not None else b""
        return self._answer(target, src, tag, RawArg(command, echo), error)

    def _query_config(self, target: _Target, request: AoeFrame, src: bytes) -> list[bytes]:
        arg = request.arg
        assert isinstance(arg, QueryConfigArg)
        ccmd, wanted, error = arg.ccmd, arg.config_string, 0
        if ccmd == ConfigCommand.TEST_EXACT:
            if wanted != target.config:
                return []  # tests answer only on a match: that is how hosts filter targets
        elif ccmd == ConfigCommand.TEST_PREFIX:
            if not target.config.startswith(wanted):
                return []
        elif ccmd == ConfigCommand.SET:
            if target.config and target.config != wanted:
                error = ErrorCode.CONFIG_STRING_PRESENT
            else:
                target.config = wanted
        elif ccmd == ConfigCommand.FORCE_SET:
            target.config = wanted
        elif ccmd != ConfigCommand.READ:
            error = ErrorCode.BAD_ARGUMENT
        reply = QueryConfigArg(
            self._buffer_count, self._firmware, self._max_sectors, AOE_VERSION, ccmd, target.config
        )
        return [self._answer(target, src, request.tag, reply, error)]

    def _mac_mask(self, target: _Target, request: AoeFrame, src: bytes) -> list[bytes]:
        arg = request.arg
        assert isinstance(arg, MacMaskArg)
        if arg.mcmd == MaskCommand.EDIT:
            # Directives apply in order and stay applied up to a failing one, as in vblade;
            # the error answer names the failing directive's index instead of listing.
            for index, directive in enumerate(arg.directives):
                merror = self._apply_directive(target, directive)
                if merror:
                    self._errors += 1
                    reply = MacMaskArg(arg.mcmd, merror, (), index)
                    return [self._answer(target, src, request.tag, reply)]
        elif arg.mcmd != MaskCommand.READ:
            reply = MacMaskArg(arg.mcmd)
            return [self._answer(target, src, request.tag, reply, ErrorCode.BAD_ARGUMENT)]
        listed = tuple(MaskDirective(MaskDirectiveCommand.NONE, mac) for mac in target.mask)
        return [self._answer(target, src, request.tag, MacMaskArg(arg.mcmd, 0, listed))]

    @staticmethod
    def _apply_directive(target: _Target, directive: MaskDirective) -> int:
        if directive.dcmd == MaskDirectiveCommand.ADD:
            if directive.mac not in target.mask:
                if len(target.mask) >= MASK_LIST_MAX:
                    return MaskError.LIST_FULL
                target.mask[directive.mac] = None
        elif directive.dcmd == MaskDirectiveCommand.DELETE:
            target.mask.pop(directive.mac, None)
        elif directive.dcmd != MaskDirectiveCommand.NONE:
            return MaskError.BAD_DIRECTIVE
        return 0

    def _reserve(self, target: _Target, request: AoeFrame, src: bytes) -> list[bytes]:
        arg = request.arg
        assert isinstance(arg, ReserveReleaseArg)
        error = 0
        if arg.rcmd in (ReserveCommand.SET, ReserveCommand.FORCE_SET):
            if len(arg.macs) > RESERVE_LIST_MAX:
                error = ErrorCode.BAD_ARGUMENT
            elif arg.rcmd == ReserveCommand.SET and target.reserve and src not in target.reserve:
                error = ErrorCode.TARGET_RESERVED
            else:
                target.reserve = dict.fromkeys(arg.macs)  # an empty list releases
        elif arg.rcmd != ReserveCommand.READ:
            error = ErrorCode.BAD_ARGUMENT
        reply = ReserveReleaseArg(arg.rcmd, tuple(target.reserve))
        return [self._answer(target, src, request.tag, reply, error)]


_ADMIN: dict[int, Callable[[Responder, _Target, AoeFrame, bytes], list[bytes]]] = {
    Command.QUERY_CONFIG: Responder._query_config,
    Command.MAC_MASK_LIST: Responder._mac_mask,
    Command.RESERVE_RELEASE: Responder._reserve,
}
