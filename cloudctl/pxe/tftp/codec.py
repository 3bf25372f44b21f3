"""TFTP wire format: packet dataclasses, `decode` and `encode` (RFC 1350, 2347, 2348, 2349, 7440).

Pure bytes <-> values; it knows nothing about sessions, files or sockets. Every malformed input
raises `TftpCodecError`, so callers need exactly one `except` around `decode`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "MAX_BLKSIZE",
    "MAX_BLOCK",
    "MIN_BLKSIZE",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "Opcode",
    "OptionAck",
    "Packet",
    "ReadRequest",
    "TftpCodecError",
    "WriteRequest",
    "decode",
    "encode",
    "encode_ack",
    "encode_data",
    "encode_error",
]

MIN_BLKSIZE = 8  # RFC 2348 valid range
MAX_BLKSIZE = 65464
MAX_BLOCK = 0xFFFF  # block numbers are 16 bit on the wire and wrap to 0


class TftpCodecError(ValueError):
    """A datagram (or a packet to encode) does not follow the TFTP wire format."""


class Opcode(enum.IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """ERROR packet codes (RFC 1350 section 5, RFC 2347 for 8)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """RRQ. `mode` is lower-cased; `options` keeps the client's order, names lower-cased."""

    filename: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """WRQ; same layout as RRQ. The server refuses these, but must still parse them."""

    filename: str
    mode: str = "octet"
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    block: int


@dataclass(frozen=True, slots=True)
class Error:
    """ERROR. `code` is an `ErrorCode` when known, a plain int for codes outside RFC 1350/2347."""

    code: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class OptionAck:
    options: dict[str, str]


Packet = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck

_OPCODE = struct.Struct("!H")
_HEADER = struct.Struct("!HH")  # opcode + block number / error code
_NUL = b"\x00"


def decode(datagram: bytes | bytearray | memoryview) -> Packet:
    """Parse one datagram. Raises `TftpCodecError` on anything malformed."""
    raw = bytes(datagram)
    if len(raw) < 2:
        raise TftpCodecError(f"datagram of {len(raw)} bytes is shorter than an opcode")
    (opcode,) = _OPCODE.unpack_from(raw)
    if opcode == Opcode.DATA:
        if len(raw) < 4:
            raise TftpCodecError("DATA shorter than its 4-byte header")
        if len(raw) - 4 > MAX_BLKSIZE:
            raise TftpCodecError(f"DATA payload of {len(raw) - 4} bytes exceeds {MAX_BLKSIZE}")
        return Data(_HEADER.unpack_from(raw)[1], raw[4:])
    if opcode == Opcode.ACK:
        if len(raw) != 4:
            raise TftpCodecError(f"ACK must be 4 bytes, got {len(raw)}")
        return Ack(_HEADER.unpack_from(raw)[1])
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(opcode, raw)
    if opcode == Opcode.ERROR:
        return _decode_error(raw)
    if opcode == Opcode.OACK:
        fields = _split_fields(raw, "OACK")
        if not fields:
            raise TftpCodecError("OACK carries no options")
        return OptionAck(_pair_options(fields, "OACK"))
    raise TftpCodecError(f"unknown opcode {opcode}")


def _decode_request(opcode: int, raw: bytes) -> ReadRequest | WriteRequest:
    kind = "RRQ" if opcode == Opcode.RRQ else "WRQ"
    fields = _split_fields(raw, kind)
    if len(fields) < 2:
        raise TftpCodecError(f"{kind} needs a filename and a mode")
    filename, mode = fields[0], fields[1].lower()
    if not filename:
        raise TftpCodecError(f"{kind} has an empty filename")
    if not mode:
        raise TftpCodecError(f"{kind} has an empty mode")
    options = _pair_options(fields[2:], kind)
    if opcode == Opcode.RRQ:
        return ReadRequest(filename, mode, options)
    return WriteRequest(filename, mode, options)


def _split_fields(raw: bytes, kind: str) -> list[str]:
    """Split the NUL-terminated ASCII strings that follow the opcode."""
    body = raw[2:]
    if not body:
        return []
    if body[-1] != 0:
        raise TftpCodecError(f"{kind} does not end with a NUL terminator")
    # Trailing NUL padding after the last complete field is tolerated: it carries no meaning and
    # costs nothing to skip, whereas rejecting it would fail a boot over a cosmetic quirk.
    body = body.rstrip(_NUL) + _NUL
    if not body.isascii():
        raise TftpCodecError(f"{kind} contains non-ASCII bytes")
    return body[:-1].decode("ascii").split("\x00")


def _pair_options(fields: list[str], kind: str) -> dict[str, str]:
    if len(fields) % 2:
        raise TftpCodecError(f"{kind} option {fields[-1]!r} has no value")
    options: dict[str, str] = {}
    for index in range(0, len(fields), 2):
        name = fields[index].lower()
        if not name:
            raise TftpCodecError(f"{kind} has an option with an empty name")
        if name in options:
            raise TftpCodecError(f"{kind} repeats option {name!r}")
        value = fields[index + 1]
        if not value:
            raise TftpCodecError(f"{kind} option {name!r} has an empty value")
        options[name] = value
    return options


def _decode_error(raw: bytes) -> Error:
    if len(raw) < 5:
        raise TftpCodecError("ERROR shorter than code plus terminator")
    if raw[-1] != 0:
        raise TftpCodecError("ERROR message does not end with a NUL terminator")
    text = raw[4:-1]
    if 0 in text:
        raise TftpCodecError("ERROR message has bytes after its NUL terminator")
    code = _HEADER.unpack_from(raw)[1]
    # The message is only ever logged, so non-ASCII bytes are replaced rather than rejected:
    # refusing a client's ERROR would keep us retransmitting to a peer that already gave up.
    message = text.decode("ascii", errors="replace")
    return Error(_known_code(code), message)


def _known_code(code: int) -> int:
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def encode(packet: Packet) -> bytes:
    """Serialise a packet. Raises `TftpCodecError` for values the wire format cannot carry."""
    if isinstance(packet, Data):
        return encode_data(packet.block, packet.payload)
    if isinstance(packet, Ack):
        return encode_ack(packet.block)
    if isinstance(packet, Error):
        return encode_error(packet.code, packet.message)
    if isinstance(packet, ReadRequest | WriteRequest):
        opcode = Opcode.RRQ if isinstance(packet, ReadRequest) else Opcode.WRQ
        if not packet.filename:
            raise TftpCodecError("request filename is empty")
        if not packet.mode:
            raise TftpCodecError("request mode is empty")
        parts = [_OPCODE.pack(opcode), _field(packet.filename), _field(packet.mode)]
        parts.extend(_option_fields(packet.options))
        return b"".join(parts)
    if isinstance(packet, OptionAck):
        if not packet.options:
            raise TftpCodecError("OACK needs at least one option")
        return b"".join([_OPCODE.pack(Opcode.OACK), *_option_fields(packet.options)])
    raise TftpCodecError(f"not a TFTP packet: {type(packet).__name__}")


def encode_data(block: int, payload: bytes | bytearray | memoryview) -> bytes:
    """DATA packet; the hot path of a transfer, so no dataclass is built."""
    _check_u16(block, "block")
    if len(payload) > MAX_BLKSIZE:
        raise TftpCodecError(f"DATA payload of {len(payload)} bytes exceeds {MAX_BLKSIZE}")
    return _HEADER.pack(Opcode.DATA, block) + payload


def encode_ack(block: int) -> bytes:
    _check_u16(block, "block")
    return _HEADER.pack(Opcode.ACK, block)


def encode_error(code: int, message: str = "") -> bytes:
    """ERROR packet. Non-ASCII characters and NULs in `message` become '?'.

    Messages often quote client-supplied names; degrading them beats failing to send the error.
    """
    _check_u16(code, "error code")
    text = message.encode("ascii", errors="replace").replace(_NUL, b"?")
    return _HEADER.pack(Opcode.ERROR, code) + text + _NUL


def _check_u16(value: int, what: str) -> None:
    if not 0 <= value <= MAX_BLOCK:
        raise TftpCodecError(f"{what} {value} does not fit in 16 bits")


def _field(text: str) -> bytes:
    if not text.isascii() or "\x00" in text:
        raise TftpCodecError(f"field {text!r} must be ASCII without NUL")
    return text.encode("ascii") + _NUL


def _option_fields(options: dict[str, str]) -> list[bytes]:
    parts: list[bytes] = []
    seen: set[str] = set()
    for name, value in options.items():
        if not name or not value:
            raise TftpCodecError(f"option {name!r} has an empty name or value")
        lowered = name.lower()
        if lowered in seen:
            raise TftpCodecError(f"option {name!r} repeated")
        seen.add(lowered)
        parts.append(_field(name))
        parts.append(_field(value))
    return parts
