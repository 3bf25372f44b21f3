"""AoE wire format (ATA over Ethernet v1, Coraid AoEr11): frame dataclasses, `decode_frame`,
`encode_frame`, and the struct layouts the responder's fast path shares. Pure bytes <-> values:
no sockets, exports or ATA semantics. Every malformed frame raises `AoeCodecError`, nothing else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "AFLAG_ASYNC",
    "AFLAG_DEVICE",
    "AFLAG_EXTENDED",
    "AFLAG_WRITE",
    "AOE_HEADER",
    "AOE_VERSION",
    "ATA_DATA_OFFSET",
    "ATA_HEADER",
    "BROADCAST_MAC",
    "BROADCAST_SHELF",
    "BROADCAST_SLOT",
    "ETHERTYPE_AOE",
    "FLAG_ERROR",
    "FLAG_RESPONSE",
    "HEADER_LEN",
    "MAX_CONFIG_STRING",
    "MIN_FRAME_LEN",
    "AoeCodecError",
    "AoeFrame",
    "Arg",
    "AtaArg",
    "Command",
    "ConfigCommand",
    "ErrorCode",
    "MacMaskArg",
    "MaskCommand",
    "MaskDirective",
    "MaskDirectiveCommand",
    "MaskError",
    "QueryConfigArg",
    "RawArg",
    "ReserveCommand",
    "ReserveReleaseArg",
    "addressed_to",
    "decode_frame",
    "encode_frame",
    "format_mac",
    "max_sectors_for_mtu",
    "parse_mac",
]

ETHERTYPE_AOE = 0x88A2
AOE_VERSION = 1
BROADCAST_MAC = b"\xff" * 6

# A target is "eSHELF.SLOT" (major 16 bits, minor 8 bits). Shelf 0xFFFF and slot 0xFF are
# broadcast: a request to them reaches every shelf and/or every slot, and each target answers
# with its *own* address, never the broadcast one (the Linux initiator discards such answers),
# so no target can live at 0xFFFF or 0xFF. Which commands honour broadcast is the responder's
# policy (discovery only).
BROADCAST_SHELF = 0xFFFF
BROADCAST_SLOT = 0xFF

FLAG_RESPONSE = 0x8  # R: set in every answer; a target never answers a frame that has it
FLAG_ERROR = 0x4  # E: the header's error field is valid

# ATA argument AFlags.
AFLAG_EXTENDED = 0x40  # E: LBA48 register set
AFLAG_DEVICE = 0x10  # D: the ATA device/head register's DEV bit
AFLAG_ASYNC = 0x02  # A: the initiator allows the answer before the write reaches media
AFLAG_WRITE = 0x01  # W: data flows initiator -> target

MAX_CONFIG_STRING = 1024
MIN_FRAME_LEN = 60  # Ethernet minimum without FCS; shorter answers are zero padded

# Offsets are from the start of the Ethernet frame (the spec's figures count from there too).
HEADER_LEN = 24  # 14 Ethernet + 10 AoE common header
ATA_DATA_OFFSET = HEADER_LEN + 12
_CONFIG_DATA_OFFSET = HEADER_LEN + 8
_MASK_DATA_OFFSET = HEADER_LEN + 4
_RESERVE_DATA_OFFSET = HEADER_LEN + 2

# dst, src, ethertype, version<<4|flags, error, major, minor, command, tag
AOE_HEADER = struct.Struct("!6s6sHBBHBBI")
# aflags, err/feature, sector count, cmd/status, lba0-3, lba4-5, reserved. The LBA is the one
# little-endian field of the protocol (the spec numbers its bytes lba0..lba5, low first).
ATA_HEADER = struct.Struct("<BBBBIHH")
# buffer count, firmware version, sector count, aoe version<<4|ccmd, config string length
_CONFIG_HEADER = struct.Struct("!HHBBH")
_MASK_HEADER = struct.Struct("!xBBB")  # reserved, mcmd, merror, dir count
_MASK_DIRECTIVE = struct.Struct("!xB6s")  # reserved, dcmd, mac
_RESERVE_HEADER = struct.Struct("!BB")  # rcmd, nmacs

assert AOE_HEADER.size == HEADER_LEN and ATA_HEADER.size == 12
assert _CONFIG_HEADER.size == 8 and _MASK_HEADER.size == 4 and _MASK_DIRECTIVE.size == 8


class AoeCodecError(ValueError):
    """A frame (or a value to encode) does not follow the AoE v1 wire format."""


class Command(enum.IntEnum):
    ATA = 0
    QUERY_CONFIG = 1
    MAC_MASK_LIST = 2
    RESERVE_RELEASE = 3


class ErrorCode(enum.IntEnum):
    """Header error field, valid when FLAG_ERROR is set."""

    UNRECOGNIZED_COMMAND = 1
    BAD_ARGUMENT = 2
    DEVICE_UNAVAILABLE = 3
    CONFIG_STRING_PRESENT = 4
    UNSUPPORTED_VERSION = 5
    TARGET_RESERVED = 6


class ConfigCommand(enum.IntEnum):
    READ = 0
    TEST_EXACT = 1  # answer only if the strings are equal
    TEST_PREFIX = 2  # answer only if the request's string is a prefix of the target's
    SET = 3  # set only if the target's string is empty
    FORCE_SET = 4


class MaskCommand(enum.IntEnum):
    READ = 0
    EDIT = 1


class MaskDirectiveCommand(enum.IntEnum):
    NONE = 0
    ADD = 1
    DELETE = 2


class MaskError(enum.IntEnum):
    UNSPECIFIED = 1
    BAD_DIRECTIVE = 2
    LIST_FULL = 3


class ReserveCommand(enum.IntEnum):
    READ = 0
    SET = 1  # only if the list is empty or the requester is on it
    FORCE_SET = 2


@dataclass(frozen=True, slots=True)
class AtaArg:
    """Issue ATA Command. `lba` is the raw 48-bit field: for 28-bit commands its bits 24-31
    carry the device/head register, which `ata.plan_ata` masks off.

    `data` is everything after the 12-byte argument header, Ethernet padding included: only
    the command and sector count say how much of it is payload.
    """

    aflags: int = 0
    err_feature: int = 0
    sector_count: int = 0
    cmd_status: int = 0
    lba: int = 0
    data: bytes = b""

    @property
    def extended(self) -> bool:
        return bool(self.aflags & AFLAG_EXTENDED)

    @property
    def write(self) -> bool:
        return bool(self.aflags & AFLAG_WRITE)


@dataclass(frozen=True, slots=True)
class QueryConfigArg:
    """Query Config Information. `sector_count` is the most sectors one ATA frame may carry."""

    buffer_count: int = 0
    firmware_version: int = 0
    sector_count: int = 0
    aoe_version: int = AOE_VERSION
    ccmd: int = ConfigCommand.READ
    config_string: bytes = b""


@dataclass(frozen=True, slots=True)
class MaskDirective:
    dcmd: int
    mac: bytes


@dataclass(frozen=True, slots=True)
class MacMaskArg:
    """MAC Mask List. In an error answer (`merror` set) no directives follow and `dir_count`
    is the index of the directive that failed; otherwise it equals `len(directives)`."""

    mcmd: int = MaskCommand.READ
    merror: int = 0
    directives: tuple[MaskDirective, ...] = ()
    dir_count: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.dir_count == -1:
            object.__setattr__(self, "dir_count", len(self.directives))


@dataclass(frozen=True, slots=True)
class ReserveReleaseArg:
    rcmd: int = ReserveCommand.READ
    macs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RawArg:
    """The argument of a command this codec does not parse (vendor commands 0xF0-0xFF, other
    protocol versions), kept verbatim so the frame still round-trips."""

    command: int
    payload: bytes = b""


Arg = AtaArg | QueryConfigArg | MacMaskArg | ReserveReleaseArg | RawArg

_COMMAND_OF_ARG: dict[type, int] = {
    AtaArg: Command.ATA,
    QueryConfigArg: Command.QUERY_CONFIG,
    MacMaskArg: Command.MAC_MASK_LIST,
    ReserveReleaseArg: Command.RESERVE_RELEASE,
}


@dataclass(frozen=True, slots=True)
class AoeFrame:
    """One AoE frame, Ethernet header included. `flags` keeps all four flag bits (R, E and the
    two reserved ones) so that decoding and encoding are exact inverses."""

    dst: bytes
    src: bytes
    major: int
    minor: int
    tag: int
    arg: Arg
    flags: int = 0
    error: int = 0
    version: int = AOE_VERSION

    @property
    def command(self) -> int:
        if isinstance(self.arg, RawArg):
            return self.arg.command
        return _COMMAND_OF_ARG[type(self.arg)]

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)

    @property
    def is_broadcast(self) -> bool:
        return self.major == BROADCAST_SHELF or self.minor == BROADCAST_SLOT


def addressed_to(major: int, minor: int, shelf: int, slot: int) -> bool:
    """Whether a request for `major.minor` reaches the target at `shelf.slot`."""
    return major in (shelf, BROADCAST_SHELF) and minor in (slot, BROADCAST_SLOT)


def max_sectors_for_mtu(mtu: int) -> int:
    """Sectors one ATA frame can carry at this MTU: 2 at 1500, 17 at 9000.

    The MTU counts the bytes after the 14-byte Ethernet header, so the exact bound is
    (mtu - 10 - 12) // 512. vblade and the Linux initiator both subtract 36 instead (their header
    structs include the Ethernet header); we do the same so that target and initiator always
    agree. The two differ only for MTUs within 14 bytes above a multiple of 512 plus 22.
    """
    sectors = (mtu - ATA_DATA_OFFSET) // 512
    if sectors < 1:
        raise AoeCodecError(f"MTU {mtu} cannot carry one 512-byte sector per AoE frame")
    return min(sectors, 255)  # the sector count fields are one byte


def parse_mac(value: str | bytes) -> bytes:
    """`"52:54:00:12:34:56"` (or with dashes, or 6 raw bytes) -> 6 bytes."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 6:
            raise AoeCodecError(f"a MAC address is 6 bytes, got {len(value)}")
        return bytes(value)
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise AoeCodecError(f"{value!r} is not a MAC address like 52:54:00:12:34:56")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise AoeCodecError(f"{value!r} is not a MAC address like 52:54:00:12:34:56") from None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


# --- decoding ---------------------------------------------------------------------------------


def _need(n: int, needed: int, what: str) -> None:
    if n < needed:
        raise AoeCodecError(f"truncated {what}: frame is {n} bytes, needs {needed}")


def _decode_ata(buf: memoryview, n: int, flags: int) -> AtaArg:
    _need(n, ATA_DATA_OFFSET, "ATA argument")
    aflags, feature, count, cmd, lba_low, lba_high, _ = ATA_HEADER.unpack_from(buf, HEADER_LEN)
    data = bytes(buf[ATA_DATA_OFFSET:])
    return AtaArg(aflags, feature, count, cmd, lba_low | lba_high << 32, data)


def _decode_config(buf: memoryview, n: int, flags: int) -> QueryConfigArg:
    _need(n, _CONFIG_DATA_OFFSET, "Query Config argument")
    bufcnt, firmware, count, vercmd, length = _CONFIG_HEADER.unpack_from(buf, HEADER_LEN)
    if length > MAX_CONFIG_STRING:
        raise AoeCodecError(f"config string length {length} exceeds {MAX_CONFIG_STRING}")
    _need(n, _CONFIG_DATA_OFFSET + length, "config string")
    string = bytes(buf[_CONFIG_DATA_OFFSET : _CONFIG_DATA_OFFSET + length])
    return QueryConfigArg(bufcnt, firmware, count, vercmd >> 4, vercmd & 0xF, string)


def _decode_mask(buf: memoryview, n: int, flags: int) -> MacMaskArg:
    _need(n, _MASK_DATA_OFFSET, "MAC Mask List argument")
    mcmd, merror, count = _MASK_HEADER.unpack_from(buf, HEADER_LEN)
    if merror and flags & FLAG_RESPONSE:
        # An error answer carries the failing directive's index, not a list.
        return MacMaskArg(mcmd, merror, (), count)
    _need(n, _MASK_DATA_OFFSET + 8 * count, f"list of {count} mask directives")
    directives = tuple(
        MaskDirective(*_MASK_DIRECTIVE.unpack_from(buf, _MASK_DATA_OFFSET + 8 * i))
        for i in range(count)
    )
    return MacMaskArg(mcmd, merror, directives, count)


def _decode_reserve(buf: memoryview, n: int, flags: int) -> ReserveReleaseArg:
    _need(n, _RESERVE_DATA_OFFSET, "Reserve/Release argument")
    rcmd, count = _RESERVE_HEADER.unpack_from(buf, HEADER_LEN)
    _need(n, _RESERVE_DATA_OFFSET + 6 * count, f"list of {count} MAC addresses")
    start = _RESERVE_DATA_OFFSET
    macs = tuple(bytes(buf[start + 6 * i : start + 6 * i + 6]) for i in range(count))
    return ReserveReleaseArg(rcmd, macs)


_DECODERS = {
    Command.ATA: _decode_ata,
    Command.QUERY_CONFIG: _decode_config,
    Command.MAC_MASK_LIST: _decode_mask,
    Command.RESERVE_RELEASE: _decode_reserve,
}


def decode_frame(frame: bytes | bytearray | memoryview) -> AoeFrame:
    """Parse one Ethernet frame. Trailing bytes after a length-delimited argument (Ethernet
    padding) are ignored; for ATA they end up in `AtaArg.data`."""
    buf = memoryview(frame).cast("B") if isinstance(frame, memoryview) else memoryview(frame)
    n = len(buf)
    _need(n, HEADER_LEN, "AoE header")
    dst, src, ethertype, verflags, error, major, minor, command, tag = AOE_HEADER.unpack_from(buf)
    if ethertype != ETHERTYPE_AOE:
        raise AoeCodecError(f"ethertype {ethertype:#06x} is not AoE ({ETHERTYPE_AOE:#06x})")
    version, flags = verflags >> 4, verflags & 0xF
    decoder = _DECODERS.get(command) if version == AOE_VERSION else None
    arg: Arg = (
        RawArg(command, bytes(buf[HEADER_LEN:])) if decoder is None else decoder(buf, n, flags)
    )
    return AoeFrame(dst, src, major, minor, tag, arg, flags, error, version)


# --- encoding ---------------------------------------------------------------------------------


def _check_mac(mac: bytes, what: str) -> None:
    if not isinstance(mac, bytes | bytearray) or len(mac) != 6:
        raise AoeCodecError(f"{what} must be 6 bytes, got {mac!r}")


def _check_range(value: int, bits: int, what: str) -> None:
    if not 0 <= value < 1 << bits:
        raise AoeCodecError(f"{what} {value!r} does not fit in {bits} bits")


def _encode_arg(arg: Arg) -> bytes:
    if isinstance(arg, AtaArg):
        _check_range(arg.lba, 48, "LBA")
        head = ATA_HEADER.pack(
            arg.aflags,
            arg.err_feature,
            arg.sector_count,
            arg.cmd_status,
            arg.lba & 0xFFFFFFFF,
            arg.lba >> 32,
            0,
        )
        return head + arg.data
    if isinstance(arg, QueryConfigArg):
        _check_range(arg.aoe_version, 4, "AoE version")
        _check_range(arg.ccmd, 4, "config command")
        if len(arg.config_string) > MAX_CONFIG_STRING:
            raise AoeCodecError(f"config string is {len(arg.config_string)} bytes, max 1024")
        head = _CONFIG_HEADER.pack(
            arg.buffer_count,
            arg.firmware_version,
            arg.sector_count,
            arg.aoe_version << 4 | arg.ccmd,
            len(arg.config_string),
        )
        return head + arg.config_string
    if isinstance(arg, MacMaskArg):
        if arg.merror == 0 and arg.dir_count != len(arg.directives):
            raise AoeCodecError("dir_count must equal the number of directives")
        parts = [_MASK_HEADER.pack(arg.mcmd, arg.merror, arg.dir_count)]
        for d in arg.directives:
            _check_mac(d.mac, "a mask directive's MAC")
            parts.append(_MASK_DIRECTIVE.pack(d.dcmd, d.mac))
        return b"".join(parts)
    if isinstance(arg, ReserveReleaseArg):
        for mac in arg.macs:
            _check_mac(mac, "a reserve list MAC")
        return _RESERVE_HEADER.pack(arg.rcmd, len(arg.macs)) + b"".join(arg.macs)
    if isinstance(arg, RawArg):
        return bytes(arg.payload)
    raise AoeCodecError(f"{type(arg).__name__} is not an AoE argument")


def encode_frame(frame: AoeFrame) -> bytes:
    """Serialise a frame, zero-padded to the 60-byte Ethernet minimum."""
    _check_mac(frame.dst, "dst")
    _check_mac(frame.src, "src")
    _check_range(frame.version, 4, "version")
    _check_range(frame.flags, 4, "flags")
    try:
        head = AOE_HEADER.pack(
            frame.dst,
            frame.src,
            ETHERTYPE_AOE,
            frame.version << 4 | frame.flags,
            frame.error,
            frame.major,
            frame.minor,
            frame.command,
            frame.tag,
        )
        body = _encode_arg(frame.arg)
    except (struct.error, TypeError, KeyError) as exc:
        raise AoeCodecError(f"cannot encode frame: {exc}") from None
    out = head + body
    if len(out) < MIN_FRAME_LEN:
        out += bytes(MIN_FRAME_LEN - len(out))
    return out
