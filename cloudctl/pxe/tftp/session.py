"""Server side of one TFTP read transfer as a sans-I/O state machine: option negotiation, windowed
DATA sending with block-number rollover, ACK handling and timeout-driven retransmission.

Bytes in, bytes out; no sockets, clocks or files. The server owns the socket and the timer:

    session = ReadSession(request, reader, limits=limits, now=loop.time())
    send_all(session.start())                     # OACK, or DATA 1 (the whole first window)
    on datagram from the peer:  send_all(session.receive(datagram, loop.time()))
    at session.deadline:        send_all(session.timeout(loop.time()))
    stop when session.finished  (session.state / session.failed say how it ended)

`reader` is anything with `size: int` and `read(offset, length) -> bytes` (a file wrapper or
`BytesReader` for rendered configs). `receive` never raises on hostile input: malformed
datagrams are counted and ignored. Decisions the RFCs leave open:
  * blksize below 8 and windowsize 0 are ignored (the answer may only be smaller than asked, so
    they cannot be clamped); values above range are clamped to the limits. timeout outside 1..255
    is ignored (RFC 2349 requires echoing it unchanged). tsize is answered with the file size
    whatever numeric value the client sent. Unknown or non-numeric options are not echoed.
  * Only timeouts retransmit. An ACK that does not advance is a duplicate and is ignored (no
    Sorcerer's Apprentice); an ACK inside the window advances it and the window restarts at the
    next block (RFC 7440), which resends the unacknowledged tail.
  * Backoff doubles from the base timeout up to max(limits.max_timeout, base); after
    `limits.max_retries` unanswered retransmissions the session fails silently.
  * RRQ/WRQ/DATA/OACK on an open session is answered with ERROR 4 and ends it. "netascii" is
    served as the reader gives it (the server hands in the CR/LF-translated file); other
    modes get ERROR 4. Reader OSErrors and short reads end the transfer with ERROR 0.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cloudctl.pxe.tftp.codec import (
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    Ack,
    Error,
    ErrorCode,
    Opcode,
    OptionAck,
    ReadRequest,
    TftpCodecError,
    decode,
    encode,
    encode_error,
)

__all__ = [
    "DEFAULT_BLKSIZE",
    "BytesReader",
    "FileReader",
    "Negotiated",
    "ReadSession",
    "SessionState",
    "TransferLimits",
    "blksize_for_mtu",
    "negotiate",
    "refuse_write",
]

DEFAULT_BLKSIZE = 512  # RFC 1350, used when the client does not negotiate blksize
MAX_WINDOWSIZE = 65535  # RFC 7440
MIN_TIMEOUT_S, MAX_TIMEOUT_S = 1, 255  # RFC 2349
_IP_UDP_TFTP_OVERHEAD = 20 + 8 + 4
_SERVED_MODES = frozenset({"octet", "netascii"})
_DATA_HEADER = struct.Struct("!HH")
_ACK_OPCODE_BYTE = int(Opcode.ACK)
_DATA_OPCODE = int(Opcode.DATA)  # plain int: struct.pack is faster without the enum


class FileReader(Protocol):
    """What a session reads from. `read` must return exactly `length` bytes (bytes-like)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes | memoryview: ...


class BytesReader:
    """`FileReader` over in-memory content, e.g. a pxelinux.cfg rendered on request."""

    __slots__ = ("_view",)

    def __init__(self, content: bytes) -> None:
        self._view = memoryview(content)  # slicing a memoryview does not copy

    @property
    def size(self) -> int:
        return len(self._view)

    def read(self, offset: int, length: int) -> memoryview:
        return self._view[offset : offset + length]


def blksize_for_mtu(mtu: int) -> int:
    """Largest DATA payload that fits one IPv4 packet: MTU - IP - UDP - TFTP header."""
    return max(MIN_BLKSIZE, min(MAX_BLKSIZE, mtu - _IP_UDP_TFTP_OVERHEAD))


@dataclass(frozen=True, slots=True)
class TransferLimits:
    """Server policy for a transfer. `max_blksize` comes from the path MTU (`for_mtu`)."""

    max_blksize: int = 1468
    max_windowsize: int = 64
    default_timeout: float = 1.0
    max_timeout: float = 8.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if not MIN_BLKSIZE <= self.max_blksize <= MAX_BLKSIZE:
            raise ValueError(f"max_blksize {self.max_blksize} outside {MIN_BLKSIZE}..{MAX_BLKSIZE}")
        if not 1 <= self.max_windowsize <= MAX_WINDOWSIZE:
            raise ValueError(f"max_windowsize {self.max_windowsize} outside 1..{MAX_WINDOWSIZE}")
        if not 0 < self.default_timeout <= self.max_timeout:
            raise ValueError("need 0 < default_timeout <= max_timeout")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")

    @classmethod
    def for_mtu(cls, mtu: int, **overrides: Any) -> TransferLimits:
        """Limits whose max_blksize fits `mtu` (1468 for 1500); other fields as keywords."""
        return cls(max_blksize=blksize_for_mtu(mtu), **overrides)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """Outcome of option negotiation. `oack` is empty when no OACK is to be sent."""

    blksize: int
    windowsize: int
    timeout: float
    oack: dict[str, str]


def _parse_count(value: str) -> int | None:
    """Decimal option value, or None. Huge values parse as a large sentinel: Python refuses to
    int() strings over 4300 digits, and anything beyond 10 digits is out of range anyway."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    return 10**10 if len(value) > 10 else int(value)


def negotiate(options: Mapping[str, str], *, file_size: int, limits: TransferLimits) -> Negotiated:
    """Decide blksize/windowsize/timeout/tsize from an RRQ's options (see module docstring)."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, limits.default_timeout
    oack: dict[str, str] = {}
    for name, value in options.items():
        number = _parse_count(value)
        if number is None:
            continue
        if name == "blksize" and number >= MIN_BLKSIZE:
            blksize = min(number, limits.max_blksize)
            oack[name] = str(blksize)
        elif name == "windowsize" and number >= 1:
            windowsize = min(number, limits.max_windowsize)
            oack[name] = str(windowsize)
        elif name == "timeout" and MIN_TIMEOUT_S <= number <= MAX_TIMEOUT_S:
            timeout = float(number)
            oack[name] = str(number)
        elif name == "tsize":
            oack[name] = str(file_size)
    return Negotiated(blksize, windowsize, timeout, oack)


def refuse_write() -> bytes:
    """ERROR packet answering any WRQ: this server never accepts uploads."""
    return encode_error(ErrorCode.ACCESS_VIOLATION, "read-only server")


class SessionState(enum.Enum):
    NEW = "new"
    AWAITING_OACK_ACK = "awaiting-oack-ack"
    SENDING = "sending"
    COMPLETED = "completed"
    OPTIONS_DECLINED = "options-declined"  # client answered our OACK with ERROR 8
    FAILED = "failed"


_ACTIVE = (SessionState.AWAITING_OACK_ACK, SessionState.SENDING)
_SENDING = SessionState.SENDING


class ReadSession:
    """One RRQ being served. Block numbers are tracked as absolute indices (1-based) and put on
    the wire modulo 65536, so files of any size roll over 65535 -> 0 -> 1."""

    def __init__(
        self,
        request: ReadRequest,
        reader: FileReader,
        *,
        limits: TransferLimits | None = None,
        now: float,
    ) -> None:
        self.request = request
        self.limits = limits or TransferLimits()
        self._reader = reader
        self.size = reader.size
        self.negotiated = negotiate(request.options, file_size=self.size, limits=self.limits)
        self.blksize = self.negotiated.blksize
        self.windowsize = self.negotiated.windowsize
        # The final block is always short, zero-length when size is a multiple of blksize.
        self.total_blocks = self.size // self.blksize + 1
        self.state = SessionState.NEW
        self.failed: str | None = None
        # Counters for logs and metrics.
        self.bytes_sent = 0  # DATA payload bytes put on the wire, retransmissions included
        self.blocks_sent = 0
        self.retransmits = 0  # packets (DATA or OACK) sent more than once
        self.timeouts = 0
        self.duplicate_acks = 0
        self.ignored_datagrams = 0  # malformed, or ACKs for blocks never sent
        self._created_at = now
        self._acked = 0  # absolute index of the highest acknowledged block
        self._window: list[bytes] = []  # packets for blocks _acked+1 .. _acked+len(_window)
        self._oack_packet: bytes | None = None
        self._base_wait = self._wait = self.negotiated.timeout
        self._max_wait = max(self.limits.max_timeout, self.negotiated.timeout)
        self._retries = 0
        self._deadline: float | None = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state not in _ACTIVE and self.state is not SessionState.NEW

    @property
    def deadline(self) -> float | None:
        """Monotonic time at which `timeout` must be called next; None once finished."""
        return self._deadline if self.state in _ACTIVE else None

    @property
    def blocks_acked(self) -> int:
        """Absolute count of blocks the client has acknowledged (not wrapped at 65536)."""
        return self._acked

    @property
    def bytes_acked(self) -> int:
        return min(self._acked * self.blksize, self.size)

    # -- events ---------------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """First packets: ERROR for an unserved mode, OACK if options were accepted, else DATA."""
        if self.state is not SessionState.NEW:
            raise RuntimeError("ReadSession.start() called twice")
        now = self._created_at
        if self.request.mode not in _SERVED_MODES:
            return self._fail(
                f"unsupported transfer mode {self.request.mode!r}",
                ErrorCode.ILLEGAL_OPERATION,
                f"mode {self.request.mode!r} not supported, use octet",
            )
        if self.negotiated.oack:
            self.state = SessionState.AWAITING_OACK_ACK
            self._oack_packet = encode(OptionAck(self.negotiated.oack))
            self._arm(now)
            return [self._oack_packet]
        self.state = SessionState.SENDING
        return self._send_window(now)

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        """Handle one datagram from the peer; returns the packets to send in response."""
        # Fast path: a well-formed ACK while sending is nearly every datagram of a transfer.
        if (
            self.state is _SENDING
            and len(datagram) == 4
            and datagram[0] == 0
            and datagram[1] == _ACK_OPCODE_BYTE
        ):
            return self._on_data_ack((datagram[2] << 8) | datagram[3], now)
        if self.state not in _ACTIVE:
            if self.state is SessionState.NEW:
                raise RuntimeError("ReadSession.receive() before start()")
            return []
        if len(datagram) == 4 and datagram[0] == 0 and datagram[1] == _ACK_OPCODE_BYTE:
            return self._on_ack((datagram[2] << 8) | datagram[3], now)
        try:
            packet = decode(datagram)
        except TftpCodecError:
            self.ignored_datagrams += 1
            return []
        if isinstance(packet, Ack):
            return self._on_ack(packet.block, now)
        if isinstance(packet, Error):
            return self._on_error(packet)
        name = type(packet).__name__
        return self._fail(
            f"client sent {name} during a read transfer",
            ErrorCode.ILLEGAL_OPERATION,
            f"unexpected {name} during read transfer",
        )

    def timeout(self, now: float) -> list[bytes]:
        """Retransmit the outstanding OACK or window if the deadline has passed."""
        if self.state not in _ACTIVE or self._deadline is None or now < self._deadline:
            return []
        if self._retries >= self.limits.max_retries:
            self._fail(f"no ACK after {self._retries} retransmissions", None, "")
            return []
        self._retries += 1
        self.timeouts += 1
        self._wait = min(self._wait * 2, self._max_wait)
        self._deadline = now + self._wait
        if self.state is SessionState.AWAITING_OACK_ACK:
            assert self._oack_packet is not None
            self.retransmits += 1
            return [self._oack_packet]
        self.retransmits += len(self._window)
        self.blocks_sent += len(self._window)
        self.bytes_sent += sum(len(packet) for packet in self._window) - 4 * len(self._window)
        return list(self._window)

    # -- internals ------------------------------------------------------------------------------

    def _on_ack(self, block: int, now: float) -> list[bytes]:
        if self.state is SessionState.AWAITING_OACK_ACK:
            if block != 0:
                self.ignored_datagrams += 1
                return []
            self.state = SessionState.SENDING
            self._oack_packet = None
            return self._send_window(now)
        return self._on_data_ack(block, now)

    def _on_data_ack(self, block: int, now: float) -> list[bytes]:
        """An ACK while DATA is out: once per window, so kept to the fewest steps."""
        acked = self._acked
        window = self._window
        advance = (block - acked) & 0xFFFF
        if advance == 0 or advance > len(window):
            # Already acknowledged (delayed or repeated ACK), or a block we never sent.
            if advance == 0 or advance >= 0x8000:
                self.duplicate_acks += 1
            else:
                self.ignored_datagrams += 1
            return []
        acked += advance
        self._acked = acked
        if acked == self.total_blocks:
            self.state = SessionState.COMPLETED
            self._window = []
            return []
        if advance == len(window):
            window.clear()
        else:
            del window[:advance]
        return self._send_window(now)

    def _on_error(self, error: Error) -> list[bytes]:
        if self.state is SessionState.AWAITING_OACK_ACK and error.code == ErrorCode.OPTION_REFUSED:
            self.state = SessionState.OPTIONS_DECLINED
            return []
        self._fail(f"client sent ERROR {int(error.code)}: {error.message!r}", None, "")
        return []

    def _send_window(self, now: float) -> list[bytes]:
        """(Re)send the window starting right after the last acknowledged block.

        Packets still cached from an earlier window are resent as they are; the rest are read.
        """
        window = self._window
        resent = len(window)
        acked = self._acked
        last = acked + self.windowsize
        if last > self.total_blocks:
            last = self.total_blocks
        next_block = acked + resent + 1
        if next_block <= last:
            blksize, size, read = self.blksize, self.size, self._reader.read
            pack, append = _DATA_HEADER.pack, window.append
            offset = start = (next_block - 1) * blksize
            try:
                for block in range(next_block, last + 1):
                    length = size - offset
                    if length > blksize:
                        length = blksize
                    payload = read(offset, length)
                    if len(payload) != length:
                        return self._fail(
                            f"reader returned {len(payload)} bytes at offset {offset}, "
                            f"expected {length} (file changed?)",
                            ErrorCode.NOT_DEFINED,
                            "read error",
                        )
                    append(pack(_DATA_OPCODE, block & 0xFFFF) + payload)
                    offset += length
            except OSError as exc:
                return self._fail(f"read failed: {exc}", ErrorCode.NOT_DEFINED, "read error")
            self.bytes_sent += offset - start
        if resent:
            self.retransmits += resent
            self.bytes_sent += sum(len(window[i]) - 4 for i in range(resent))
        self.blocks_sent += len(window)
        self._retries = 0
        self._wait = wait = self._base_wait
        self._deadline = now + wait
        return window[:]

    def _arm(self, now: float) -> None:
        self._deadline = now + self._wait

    def _fail(self, reason: str, code: int | None, message: str) -> list[bytes]:
        """End the session; `code` None means end silently (the peer is gone or already knows)."""
        self.state = SessionState.FAILED
        self.failed = reason
        self._window = []
        self._oack_packet = None
        return [] if code is None else [encode_error(code, message)]
