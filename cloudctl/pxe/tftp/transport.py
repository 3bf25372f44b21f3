"""Socket-side pieces shared by the in-loop TFTP server and its transfer workers: reading a file
ahead in whole windows, and putting a window on the wire with UDP segmentation offload.

No protocol decisions here (those are the session's); no event loop either.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Sequence

__all__ = [
    "GSO_REFUSED",
    "ReadAhead",
    "disable_gso",
    "enable_gso",
    "netascii",
    "send_segmented",
]

# Linux constants Python 3.11 does not export.
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)

# With UDP generic segmentation offload a whole window leaves in one sendto: the kernel cuts
# it into blksize+4 datagrams. One send carries at most 64 segments (UDP_MAX_SEGMENTS before
# Linux 6.13) and one IP datagram's worth of bytes.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65535 - 20 - 8
# What sendto raises when the kernel will not segment: no checksum offload on the device (EIO),
# or segments larger than the path MTU (EMSGSIZE; EINVAL before Linux 6.x).
GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE})
# Files are read in chunks of at least this many bytes (one pread instead of one per block).
READ_AHEAD_BYTES = 64 * 1024


def netascii(data: bytes) -> bytes:
    """RFC 1350/764: CR becomes CR NUL, then LF becomes CR LF (in that order)."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class ReadAhead:
    """`FileReader` over `read(offset, length) -> bytes` (a pread) that reads READ_AHEAD_BYTES or
    a window at a time and hands the session slices: one syscall per chunk, not per block."""

    __slots__ = ("_chunk", "_end", "_read", "_start", "_view", "size")

    def __init__(self, read: Callable[[int, int], bytes], size: int) -> None:
        self._read = read
        self.size = size
        self._chunk = READ_AHEAD_BYTES
        self._start = self._end = 0
        self._view = memoryview(b"")

    def align(self, blksize: int, windowsize: int) -> None:
        """Size chunks in whole blocks (known once negotiated), so no block straddles two."""
        self._chunk = blksize * max(windowsize, READ_AHEAD_BYTES // blksize)

    def read(self, offset: int, length: int) -> memoryview | bytes:
        start = self._start
        if start <= offset and offset + length <= self._end:
            return self._view[offset - start : offset - start + length]
        data = self._read(offset, max(length, self._chunk))
        self._view = memoryview(data)
        self._start, self._end = offset, offset + len(data)
        return self._view[:length]  # short near a shrunken file: the session notices


def enable_gso(sock: socket.socket, blksize: int) -> int:
    """Turn on UDP_SEGMENT for DATA packets of `blksize`; returns the segments per send.
    Raises OSError when the kernel has no UDP segmentation offload."""
    segment = blksize + 4
    sock.setsockopt(SOL_UDP, UDP_SEGMENT, segment)
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))


def disable_gso(sock: socket.socket) -> None:
    # While UDP_SEGMENT is set the kernel refuses even single datagrams it would otherwise
    # fragment, so it is cleared, not just no longer used.
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)


def send_segmented(
    sendto: Callable[[bytes, tuple[str, int]], int],
    peer: tuple[str, int],
    packets: Sequence[bytes],
    chunk: int,
) -> None:
    """Send a window in sendtos of up to `chunk` packets each (UDP_SEGMENT must be on)."""
    # Every DATA packet of a window is blksize+4 bytes but the file's last, which is shorter
    # and comes last: exactly the layout UDP_SEGMENT cuts a buffer into.
    if len(packets) == 1:
        sendto(packets[0], peer)
        return
    for first in range(0, len(packets), chunk):
        sendto(b"".join(packets[first : first + chunk]), peer)
