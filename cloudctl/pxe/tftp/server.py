"""cloudctld's TFTP server: the UDP listener on port 69 and one socket (TID) per read transfer.

Moves bytes and timers for `ReadSession` over files from `BootFiles`; refuses writes, traversal
and load beyond the transfer caps with the matching ERROR packet. No protocol decisions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cloudctl.pxe.bootfiles import BootFile, BootFileError, BootFiles, Refusal, RenderedFile
from cloudctl.pxe.tftp.codec import (
    ErrorCode,
    ReadRequest,
    TftpCodecError,
    WriteRequest,
    decode,
    encode_error,
)
from cloudctl.pxe.tftp.session import (
    BytesReader,
    FileReader,
    ReadSession,
    SessionState,
    TransferLimits,
    refuse_write,
)

__all__ = ["TftpServer", "TftpStartError"]

log = logging.getLogger(__name__)

# Linux constants Python 3.11 does not export.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

DEFAULT_MTU = 1500  # assumed when no interface is given to read it from
# A boot storm sends hundreds of RRQs at once; the default ~200 KiB buffer holds only a few.
LISTEN_RECEIVE_BUFFER = 1024 * 1024
# RRQs read per wake-up of the listener: enough to drain a burst, bounded so that running
# transfers are not starved while a flood of requests is being answered.
LISTEN_BATCH = 64
# Largest datagram a client legitimately sends on a transfer socket (an ACK is 4 bytes, an
# ERROR a few dozen); anything longer is hostile and only needs to be seen as malformed.
TRANSFER_RECEIVE_SIZE = 1024
# Datagrams one transfer handles per wake-up before the others get their turn.
TRANSFER_BURST = 64
# With UDP generic segmentation offload a whole window leaves in one sendto: the kernel cuts
# it into blksize+4 datagrams. One send carries at most 64 segments (UDP_MAX_SEGMENTS before
# Linux 6.13) and one IP datagram's worth of bytes.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65535 - 20 - 8
# Files are read in chunks of at least this many bytes (one pread instead of one per block).
READ_AHEAD_BYTES = 64 * 1024
BUSY_MESSAGE = "server busy, retry"
UNKNOWN_TID_PACKET = encode_error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID")
# What sendto raises when the kernel will not segment: no checksum offload on the device (EIO),
# or segments larger than the path MTU (EMSGSIZE; EINVAL before Linux 6.x).
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE})
_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr


# netascii changes the length, so the translated file is held in memory: text only.
NETASCII_LIMIT = 8 * 1024 * 1024
NETASCII_TOO_BIG = "netascii is for text files up to 8 MiB; ask in octet (binary) mode"


def netascii(data: bytes) -> bytes:
    """RFC 1350/764: CR becomes CR NUL, then LF becomes CR LF (in that order)."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class TftpStartError(Exception):
    """The TFTP listener could not be opened; the message says why and what to check."""


def interface_mtu(interface: str) -> int:
    """The MTU of `interface` in this network namespace (sysfs follows `ip netns exec`)."""
    try:
        return int(Path(f"/sys/class/net/{interface}/mtu").read_text())
    except (OSError, ValueError) as exc:
        raise TftpStartError(f"cannot read the MTU of interface {interface!r}: {exc}") from None


class _ReadAhead:
    """`FileReader` over a disk file that preads READ_AHEAD_BYTES or a window at a time and hands
    the session slices: one syscall per chunk instead of one per block."""

    __slots__ = ("_chunk", "_end", "_file", "_start", "_view", "size")

    def __init__(self, file: BootFile) -> None:
        self._file = file
        self.size = file.size
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
        data = self._file.read(offset, max(length, self._chunk))
        self._view = memoryview(data)
        self._start, self._end = offset, offset + len(data)
        return self._view[:length]  # short near a shrunken file: the session notices


class _Transfer:
    """One running read transfer: its socket (the server's TID), session, file and timer."""

    __slots__ = (
        "client_ip",
        "file",
        "gso_chunk",
        "key",
        "peer",
        "server",
        "session",
        "sock",
        "started",
        "timer",
        "timer_at",
    )

    def __init__(
        self,
        server: TftpServer,
        sock: socket.socket,
        peer: tuple[str, int],
        session: ReadSession,
        file: BootFile,
    ) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.key = peer
        self.client_ip = peer[0]
        self.session = session
        self.file = file
        self.started = time.monotonic()
        self.gso_chunk = 0  # segments per GSO send; 0: one sendto per packet
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

    def on_readable(self) -> None:
        try:
            self._receive()
        except Exception:
            self.server.crashed(self)

    def _receive(self) -> None:
        recvfrom, peer, session = self.sock.recvfrom, self.peer, self.session
        now = self.server.loop_time
        # In lock-step the next ACK is often queued by the time sendto returns (on a veth the
        # kernel delivers our DATA to the client inside that call): reading again at once
        # saves a pass through the event loop per block when it is, and costs one EAGAIN
        # when it is not (measured: less CPU per block either way). Bounded, so one fast
        # client cannot starve the other transfers.
        for _ in range(TRANSFER_BURST):
            try:
                data, addr = recvfrom(TRANSFER_RECEIVE_SIZE)
            except OSError:  # EAGAIN: nothing more queued (errors are not reported on UDP)
                break
            if addr != peer:
                # RFC 1350: a datagram from another TID is answered and otherwise ignored.
                self.server.counters["unknown_tid"] += 1
                with contextlib.suppress(OSError):
                    self.sock.sendto(UNKNOWN_TID_PACKET, addr)
                continue
            packets = session.receive(data, now())
            if packets:
                self.send(packets)
            if session.finished:
                self.server.end(self)
                return
        deadline = session.deadline
        # Progress moves the deadline later and the timer just re-arms itself when it fires;
        # only an earlier deadline (progress after a backoff) needs the handle replaced.
        if deadline is not None and deadline < self.timer_at:
            self.arm(deadline)

    def on_timer(self) -> None:
        self.timer = None
        self.timer_at = float("inf")
        try:
            session = self.session
            deadline = session.deadline
            if deadline is None:
                return
            now = self.server.loop_time()
            if now >= deadline:
                packets = session.timeout(now)
                if packets:
                    self.send(packets)
                if session.finished:
                    self.server.end(self)
                    return
                deadline = session.deadline
                if deadline is None:
                    return
            self.arm(deadline)
        except Exception:
            self.server.crashed(self)

    def arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = self.server.loop.call_at(deadline, self.on_timer)

    def send(self, packets: list[bytes]) -> None:
        sendto, peer = self.sock.sendto, self.peer
        try:
            if self.gso_chunk:
                try:
                    self._send_segmented(packets)
                    return
                except OSError as exc:
                    if exc.errno not in _GSO_REFUSED:
                        raise
                    self._stop_gso(exc)
            for packet in packets:
                sendto(packet, peer)
        except BlockingIOError:
            # Socket buffer full: what was not sent counts as lost; the timer resends it.
            self.server.counters["send_dropped"] += 1
        except OSError as exc:
            self.server.counters["send_errors"] += 1
            log.debug("TFTP send to %s:%d failed: %s", *self.peer, exc)

    def _send_segmented(self, packets: list[bytes]) -> None:
        # Every DATA packet of a window is blksize+4 bytes but the file's last, which is
        # shorter and comes last: exactly the layout UDP_SEGMENT cuts a buffer into.
        sendto, peer, chunk = self.sock.sendto, self.peer, self.gso_chunk
        if len(packets) == 1:
            sendto(packets[0], peer)
            return
        for first in range(0, len(packets), chunk):
            sendto(b"".join(packets[first : first + chunk]), peer)

    def _stop_gso(self, exc: OSError) -> None:
        # While UDP_SEGMENT is set the kernel refuses even single datagrams it would otherwise
        # fragment, so it is cleared, not just no longer used. Packets of the window already
        # sent go again: the client ignores duplicates, and this happens once per server.
        self.gso_chunk = 0
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
        self.server.gso_refused(exc)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.sock.close()
        self.file.close()


class TftpServer:
    """Serves boot files over TFTP (RFC 1350, 2347-2349, 7440), read-only.

    The listener and every transfer socket sit in one epoll set that the asyncio loop watches
    as a single reader: one loop callback per wake-up serves every transfer that has an ACK
    waiting, instead of one loop handle per ready socket.

    `counters`: on port 69 received, requests (RRQs), duplicate_requests, refused_write,
    not_found, access_violation, busy, malformed, unexpected_opcode; per transfer started,
    completed, failed, options_declined, unknown_tid; added when a transfer ends: bytes_sent,
    retransmits, timeouts, ignored_datagrams; trouble: send_errors, send_dropped,
    socket_errors, internal_error. `active` is the number of transfers running.
    """

    def __init__(
        self,
        files: BootFiles,
        *,
        interface: str | None,
        port: int = 69,
        bind_address: str = "0.0.0.0",
        max_transfers: int,
        max_per_client: int,
        max_windowsize: int,
        mtu: int | None = None,
    ) -> None:
        if max_transfers < 1 or max_per_client < 1:
            raise ValueError("max_transfers and max_per_client must be at least 1")
        self.files = files
        self.interface = interface
        self.port = port
        self.bind_address = bind_address
        self.max_transfers = max_transfers
        self.max_per_client = max_per_client
        self.max_windowsize = max_windowsize
        self.mtu = mtu
        self.limits: TransferLimits | None = None
        self.counters: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.loop_time: Callable[[], float] = time.monotonic
        self._listener: socket.socket | None = None
        self._epoll: select.epoll | None = None
        self._handlers: dict[int, Callable[[], None]] = {}
        self._transfers: dict[tuple[str, int], _Transfer] = {}
        self._per_client: Counter[str] = Counter()
        self._gso = True  # until the kernel refuses it once

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Transfers running now."""
        return len(self._transfers)

    async def start(self) -> None:
        mtu = self.mtu
        if mtu is None:
            mtu = interface_mtu(self.interface) if self.interface else DEFAULT_MTU
        self.limits = TransferLimits.for_mtu(mtu, max_windowsize=self.max_windowsize)
        where = f"{self.interface or self.bind_address} port {self.port}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.interface:
                # Only this link: boot files are for the provisioning network, nowhere else.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, LISTEN_RECEIVE_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTEN_RECEIVE_BUFFER)
            # The address each RRQ was sent to: its transfer must answer from that address.
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.bind((self.bind_address, self.port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENODEV:
                raise TftpStartError(
                    f"interface {self.interface!r} does not exist on this machine"
                ) from None
            raise TftpStartError(f"cannot listen for TFTP on {where}: {exc.strerror}") from None
        self.loop = asyncio.get_running_loop()
        self.loop_time = self.loop.time
        self._listener = sock
        self._epoll = select.epoll()
        self._watch(sock, self._on_listener_readable)
        self.loop.add_reader(self._epoll.fileno(), self._on_epoll)
        log.info(
            "TFTP listening on %s (blksize <= %d, windowsize <= %d, %d transfers, %d per client)",
            where,
            self.limits.max_blksize,
            self.limits.max_windowsize,
            self.max_transfers,
            self.max_per_client,
        )

    async def close(self) -> None:
        for transfer in list(self._transfers.values()):
            self._forget(transfer)
        if self._epoll is not None:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._handlers.clear()

    # -- event dispatch -------------------------------------------------------------------------

    def _watch(self, sock: socket.socket, handler: Callable[[], None]) -> None:
        assert self._epoll is not None
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def _on_epoll(self) -> None:
        if self._epoll is None:
            return
        handlers = self._handlers
        for fd, _ in self._epoll.poll(0):
            # A handler may have closed a socket whose event is still in this batch, and its
            # number may already belong to a new transfer: handlers tolerate empty reads.
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler()
            except Exception:
                self.counters["internal_error"] += 1
                log.exception("TFTP handler for fd %d failed", fd)

    # -- the listener (port 69) -----------------------------------------------------------------

    def _on_listener_readable(self) -> None:
        sock = self._listener
        if sock is None:
            return
        for _ in range(LISTEN_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(2048, 64)
            except OSError:
                return
            local_ip = self.bind_address
            for level, kind, value in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                    local_ip = socket.inet_ntoa(_PKTINFO.unpack_from(value)[1])
            self.datagram_received(data, addr, local_ip)

    def datagram_received(self, data: bytes, addr: tuple[str, int], local_ip: str) -> None:
        """One datagram on port 69 from `addr`, sent to our `local_ip`. Never raises."""
        self.counters["received"] += 1
        try:
            self._on_request(data, addr, local_ip)
        except Exception:
            self.counters["internal_error"] += 1
            log.exception("TFTP request from %s:%d failed", *addr)

    def _on_request(self, data: bytes, addr: tuple[str, int], local_ip: str) -> None:
        try:
            request = decode(data)
        except TftpCodecError as exc:
            self.counters["malformed"] += 1
            log.debug("dropped a malformed datagram from %s:%d: %s", *addr, exc)
            return
        if isinstance(request, WriteRequest):
            self.counters["refused_write"] += 1
            log.info("refused a write of %r from %s", request.filename, addr[0])
            self._reply_once(local_ip, addr, refuse_write())
            return
        if not isinstance(request, ReadRequest):
            # ACK/DATA/ERROR/OACK belong on a transfer's port; answering them here would only
            # make us a reflector.
            self.counters["unexpected_opcode"] += 1
            return
        self.counters["requests"] += 1
        if addr in self._transfers:
            # The client retransmitted its RRQ before our first answer reached it: that
            # transfer's own timer resends the answer.
            self.counters["duplicate_requests"] += 1
            return
        client_ip = addr[0]
        if (
            len(self._transfers) >= self.max_transfers
            or self._per_client[client_ip] >= self.max_per_client
        ):
            self.counters["busy"] += 1
            log.debug("busy: refused %r for %s", request.filename, client_ip)
            self._reply_once(local_ip, addr, encode_error(ErrorCode.NOT_DEFINED, BUSY_MESSAGE))
            return
        try:
            file = self.files.open(request.filename, mac=None, client_ip=client_ip)
        except BootFileError as exc:
            if exc.refusal is Refusal.NOT_FOUND:
                self.counters["not_found"] += 1
                log.debug("%s asked for %r: not found", client_ip, request.filename)
                packet = encode_error(ErrorCode.FILE_NOT_FOUND, str(exc))
            else:
                self.counters["access_violation"] += 1
                log.warning("refused %r to %s: %s", request.filename, client_ip, exc)
                packet = encode_error(ErrorCode.ACCESS_VIOLATION, str(exc))
            self._reply_once(local_ip, addr, packet)
            return
        except OSError as exc:  # unreadable, or a directory: nothing a retry would fix
            self.counters["access_violation"] += 1
            log.warning("cannot open %r for %s: %s", request.filename, client_ip, exc)
            self._reply_once(
                local_ip, addr, encode_error(ErrorCode.ACCESS_VIOLATION, "cannot open")
            )
            return
        if request.mode == "netascii":
            file = self._netascii(file)
            if file is None:
                self.counters["refused_netascii"] += 1
                self._reply_once(
                    local_ip, addr, encode_error(ErrorCode.NOT_DEFINED, NETASCII_TOO_BIG)
                )
                return
        try:
            self._start_transfer(request, file, addr, local_ip)
        except BaseException:
            file.close()
            raise

    @staticmethod
    def _netascii(file: BootFile) -> RenderedFile | None:
        """The file as netascii, or None when it is too large to translate in memory."""
        try:
            if file.size > NETASCII_LIMIT:
                return None
            return RenderedFile(file.name, netascii(file.read(0, file.size)))
        finally:
            file.close()

    def _start_transfer(
        self, request: ReadRequest, file: BootFile, addr: tuple[str, int], local_ip: str
    ) -> None:
        assert self.limits is not None
        # Rendered content is sliced through a memoryview (no copy per block).
        reader: FileReader = (
            BytesReader(file.content) if isinstance(file, RenderedFile) else _ReadAhead(file)
        )
        session = ReadSession(request, reader, limits=self.limits, now=self.loop_time())
        if isinstance(reader, _ReadAhead):
            reader.align(session.blksize, session.windowsize)
        try:
            sock = self._transfer_socket(local_ip)
        except OSError as exc:
            self.counters["socket_errors"] += 1
            log.warning("no socket for a transfer to %s:%d: %s", *addr, exc)
            file.close()
            return
        transfer = _Transfer(self, sock, addr, session, file)
        try:
            self._begin(transfer)
        except BaseException:
            if self._transfers.get(addr) is transfer:
                self._forget(transfer)
            else:
                transfer.close()
            raise

    def _begin(self, transfer: _Transfer) -> None:
        session, addr = transfer.session, transfer.peer
        if session.windowsize > 1 and self._gso:
            segment = session.blksize + 4
            try:
                transfer.sock.setsockopt(SOL_UDP, UDP_SEGMENT, segment)
                transfer.gso_chunk = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // segment))
            except OSError as exc:
                self.gso_refused(exc)
        packets = session.start()
        if packets:
            transfer.send(packets)
        if session.finished:  # an unserved mode, or the file could not be read
            self.counters["failed"] += 1
            name = session.request.filename
            log.info("TFTP %r to %s failed at once: %s", name, addr[0], session.failed)
            transfer.close()
            return
        self.counters["started"] += 1
        self._transfers[addr] = transfer
        self._per_client[addr[0]] += 1
        self._watch(transfer.sock, transfer.on_readable)
        assert session.deadline is not None
        transfer.arm(session.deadline)

    def _transfer_socket(self, local_ip: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            # Not connect()ed: a connected socket never sees datagrams from other ports, which
            # RFC 1350 wants answered with ERROR 5 (the kernel would send ICMP unreachable).
            sock.bind((local_ip, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _reply_once(self, local_ip: str, addr: tuple[str, int], packet: bytes) -> None:
        """Send a refusal from a fresh port, as the transfer it refuses would have (RFC 1350)."""
        try:
            sock = self._transfer_socket(local_ip)
        except OSError:
            sock = None
        try:
            if sock is not None:
                sock.sendto(packet, addr)
            elif self._listener is not None:
                self._listener.sendto(packet, addr)
        except OSError as exc:
            self.counters["send_errors"] += 1
            log.debug("cannot answer %s:%d: %s", *addr, exc)
        finally:
            if sock is not None:
                sock.close()

    # -- transfer ends --------------------------------------------------------------------------

    def end(self, transfer: _Transfer) -> None:
        """A transfer's session finished: count how, then release its socket and file."""
        session = transfer.session
        name, client = session.request.filename, transfer.client_ip
        if session.state is SessionState.COMPLETED:
            self.counters["completed"] += 1
            elapsed = time.monotonic() - transfer.started
            log.debug(
                "sent %r (%d bytes, blksize %d, windowsize %d) to %s in %.3f s",
                name,
                session.size,
                session.blksize,
                session.windowsize,
                client,
                elapsed,
            )
        elif session.state is SessionState.OPTIONS_DECLINED:
            self.counters["options_declined"] += 1
        else:
            self.counters["failed"] += 1
            log.info("TFTP %r to %s failed: %s", name, client, session.failed)
        self._forget(transfer)

    def crashed(self, transfer: _Transfer) -> None:
        self.counters["internal_error"] += 1
        log.exception("TFTP transfer to %s:%d failed inside the server", *transfer.peer)
        self._forget(transfer)

    def _forget(self, transfer: _Transfer) -> None:
        if self._transfers.get(transfer.key) is not transfer:
            return
        del self._transfers[transfer.key]
        left = self._per_client[transfer.client_ip] - 1
        if left > 0:
            self._per_client[transfer.client_ip] = left
        else:
            del self._per_client[transfer.client_ip]
        session = transfer.session
        self.counters["bytes_sent"] += session.bytes_sent
        self.counters["retransmits"] += session.retransmits
        self.counters["timeouts"] += session.timeouts
        self.counters["ignored_datagrams"] += session.ignored_datagrams
        fd = transfer.sock.fileno()
        self._handlers.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        transfer.close()

    def gso_refused(self, exc: OSError) -> None:
        if self._gso:
            self._gso = False
            log.info("UDP segmentation offload unavailable (%s): one sendto per DATA packet", exc)
