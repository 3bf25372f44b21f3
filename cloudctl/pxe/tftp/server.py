"""cloudctld's TFTP server: the UDP listener on port 69 and one socket (TID) per read transfer.

Moves bytes and timers for `ReadSession` over files from `BootFiles`; refuses writes, traversal
and load beyond the transfer caps with the matching ERROR packet. No protocol decisions here.
With `workers` > 0 the transfers run in worker processes (workers.py) and this loop only
answers requests, keeps the caps and counts what the workers report.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cloudctl.pxe.bootfiles import (
    BootFile,
    BootFileError,
    BootFiles,
    DiskFile,
    Refusal,
    RenderedFile,
)
from cloudctl.pxe.tftp.codec import (
    ErrorCode,
    ReadRequest,
    TftpCodecError,
    WriteRequest,
    decode,
    encode_error,
)
from cloudctl.pxe.tftp.handoff import Handoff, Report
from cloudctl.pxe.tftp.looptransfer import LoopTransfer
from cloudctl.pxe.tftp.session import (
    BytesReader,
    FileReader,
    ReadSession,
    SessionState,
    TransferLimits,
    refuse_write,
)
from cloudctl.pxe.tftp.transport import ReadAhead, enable_gso, netascii
from cloudctl.pxe.tftp.workers import (
    HandedTransfer,
    WorkerPool,
    WorkerStartError,
    memfd_of,
)

__all__ = ["TftpServer", "TftpStartError", "netascii"]

log = logging.getLogger(__name__)

# Linux constants Python 3.11 does not export.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

DEFAULT_MTU = 1500  # assumed when no interface is given to read it from
# A boot storm sends hundreds of RRQs at once; the default ~200 KiB buffer holds only a few.
LISTEN_RECEIVE_BUFFER = 1024 * 1024
# RRQs read per wake-up of the listener: enough to drain a burst, bounded so that running
# transfers are not starved while a flood of requests is being answered.
LISTEN_BATCH = 64
BUSY_MESSAGE = "server busy, retry"
_PKTINFO = struct.Struct("@i4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr


# netascii changes the length, so the translated file is held in memory: text only.
NETASCII_LIMIT = 8 * 1024 * 1024
NETASCII_TOO_BIG = "netascii is for text files up to 8 MiB; ask in octet (binary) mode"


class TftpStartError(Exception):
    """The TFTP listener could not be opened; the message says why and what to check."""


def interface_mtu(interface: str) -> int:
    """The MTU of `interface` in this network namespace (sysfs follows `ip netns exec`)."""
    try:
        return int(Path(f"/sys/class/net/{interface}/mtu").read_text())
    except (OSError, ValueError) as exc:
        raise TftpStartError(f"cannot read the MTU of interface {interface!r}: {exc}") from None


class TftpServer:
    """Serves boot files over TFTP (RFC 1350, 2347-2349, 7440), read-only.

    The listener and every transfer socket sit in one epoll set that the asyncio loop watches
    as a single reader: one loop callback per wake-up serves every transfer that has an ACK
    waiting, instead of one loop handle per ready socket.

    `counters`: on port 69 received, requests (RRQs), duplicate_requests, refused_write,
    not_found, access_violation, busy, malformed, unexpected_opcode; per transfer started,
    completed, failed, options_declined, unknown_tid; added when a transfer ends: bytes_sent,
    retransmits, timeouts, ignored_datagrams; trouble: send_errors, send_dropped,
    socket_errors, internal_error, worker_lost. `active` is the number of transfers running.

    `workers` > 0 runs the transfers in that many worker processes instead (workers.py): this
    loop then parses requests, checks paths, renders, keeps the caps and logs, and a worker runs
    the session. `started` then also counts transfers a worker ended at once (bad mode).
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
        workers: int = 0,
    ) -> None:
        if max_transfers < 1 or max_per_client < 1:
            raise ValueError("max_transfers and max_per_client must be at least 1")
        if workers < 0:
            raise ValueError("workers must be 0 (transfers on the event loop) or more")
        self.files = files
        self.interface = interface
        self.port = port
        self.bind_address = bind_address
        self.max_transfers = max_transfers
        self.max_per_client = max_per_client
        self.max_windowsize = max_windowsize
        self.mtu = mtu
        self.workers = workers
        self.limits: TransferLimits | None = None
        self.counters: Counter[str] = Counter()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self.loop_time: Callable[[], float] = time.monotonic
        self._listener: socket.socket | None = None
        self._epoll: select.epoll | None = None
        self._handlers: dict[int, Callable[[], None]] = {}
        self._transfers: dict[tuple[str, int], LoopTransfer | HandedTransfer] = {}
        self._per_client: Counter[str] = Counter()
        self._gso = True  # until the kernel refuses it once
        self._pool: WorkerPool | None = None
        self._handed: dict[int, HandedTransfer] = {}  # by transfer id
        self._last_id = 0

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Transfers running now."""
        return len(self._transfers)

    @property
    def worker_pids(self) -> list[int]:
        """PIDs of the transfer workers running now (none with workers=0)."""
        return self._pool.pids if self._pool is not None else []

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
        if self.workers:
            pool = WorkerPool(
                self.workers,
                on_report=self._on_report,
                on_lost=self._on_lost,
                on_gso_refused=self.gso_refused,
            )
            try:
                await pool.start()
            except WorkerStartError as exc:
                sock.close()
                raise TftpStartError(str(exc)) from None
            self._pool = pool
        self._listener = sock
        self._epoll = select.epoll()
        self._watch(sock, self._on_listener_readable)
        self.loop.add_reader(self._epoll.fileno(), self._on_epoll)
        log.info(
            "TFTP listening on %s (blksize <= %d, windowsize <= %d, %d transfers, %d per client, "
            "%s)",
            where,
            self.limits.max_blksize,
            self.limits.max_windowsize,
            self.max_transfers,
            self.max_per_client,
            f"{self.workers} transfer workers" if self.workers else "transfers on the event loop",
        )

    async def close(self) -> None:
        for transfer in list(self._transfers.values()):
            if isinstance(transfer, LoopTransfer):
                self._forget(transfer)
        self._transfers.clear()
        self._handed.clear()
        self._per_client.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
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
        if self._pool is not None:
            self._hand_off(request, file, addr, local_ip)
            return
        # Rendered content is sliced through a memoryview (no copy per block).
        reader: FileReader = (
            BytesReader(file.content)
            if isinstance(file, RenderedFile)
            else ReadAhead(file.read, file.size)
        )
        session = ReadSession(request, reader, limits=self.limits, now=self.loop_time())
        if isinstance(reader, ReadAhead):
            reader.align(session.blksize, session.windowsize)
        sock = self._socket_for(local_ip, addr, file)
        if sock is None:
            return
        transfer = LoopTransfer(self, sock, addr, session, file)
        try:
            self._begin(transfer)
        except BaseException:
            if self._transfers.get(addr) is transfer:
                self._forget(transfer)
            else:
                transfer.close()
            raise

    def _begin(self, transfer: LoopTransfer) -> None:
        session, addr = transfer.session, transfer.peer
        if session.windowsize > 1 and self._gso:
            try:
                transfer.gso_chunk = enable_gso(transfer.sock, session.blksize)
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

    def _hand_off(
        self, request: ReadRequest, file: BootFile, addr: tuple[str, int], local_ip: str
    ) -> None:
        """Give the transfer to a worker: its socket, the open file (rendered content in a
        memfd) and the request; the worker negotiates and runs the session."""
        assert self._pool is not None and self.limits is not None
        sock = self._socket_for(local_ip, addr, file)
        if sock is None:
            return
        memfd = -1
        try:
            if isinstance(file, DiskFile):
                file_fd = file.fileno()
            else:
                memfd = file_fd = memfd_of(file.content)
            self._last_id += 1
            handoff = Handoff(self._last_id, addr, request, self.limits, self._gso)
            handed = self._pool.hand_off(handoff, sock.fileno(), file_fd)
        finally:
            # The worker holds its own copies now (or nobody needs them).
            sock.close()
            file.close()
            if memfd >= 0:
                os.close(memfd)
        if not handed:
            self.counters["busy"] += 1
            self._reply_once(local_ip, addr, encode_error(ErrorCode.NOT_DEFINED, BUSY_MESSAGE))
            return
        self.counters["started"] += 1
        transfer = HandedTransfer(handoff.transfer_id, addr, request.filename)
        self._handed[transfer.transfer_id] = transfer
        self._transfers[addr] = transfer
        self._per_client[addr[0]] += 1

    def _socket_for(
        self, local_ip: str, addr: tuple[str, int], file: BootFile
    ) -> socket.socket | None:
        """A transfer's own socket (its TID), or None after counting, logging and closing the
        file when the system has none to give."""
        try:
            return self._transfer_socket(local_ip)
        except OSError as exc:
            self.counters["socket_errors"] += 1
            log.warning("no socket for a transfer to %s:%d: %s", *addr, exc)
            file.close()
            return None

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

    def end(self, transfer: LoopTransfer) -> None:
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

    def _on_report(self, report: Report) -> None:
        """A worker says how one of its transfers ended."""
        transfer = self._handed.pop(report.transfer_id, None)
        if transfer is None:
            return
        self._release(transfer)
        counters = self.counters
        counters["bytes_sent"] += report.bytes_sent
        counters["retransmits"] += report.retransmits
        counters["timeouts"] += report.timeouts
        counters["ignored_datagrams"] += report.ignored_datagrams
        for name in ("unknown_tid", "send_errors", "send_dropped"):
            if getattr(report, name):
                counters[name] += getattr(report, name)
        if report.internal_error:
            counters["internal_error"] += 1
        name, client = transfer.name, transfer.client_ip
        if report.state == SessionState.COMPLETED.value:
            counters["completed"] += 1
            log.debug(
                "sent %r (%d bytes, blksize %d, windowsize %d) to %s in %.3f s",
                name,
                report.size,
                report.blksize,
                report.windowsize,
                client,
                time.monotonic() - transfer.started,
            )
        elif report.state == SessionState.OPTIONS_DECLINED.value:
            counters["options_declined"] += 1
        else:
            counters["failed"] += 1
            how = "failed at once" if report.at_start else "failed"
            log.info("TFTP %r to %s %s: %s", name, client, how, report.failed)

    def _on_lost(self, transfer_id: int) -> None:
        """The worker running this transfer died; the client will time out."""
        transfer = self._handed.pop(transfer_id, None)
        if transfer is None:
            return
        self._release(transfer)
        self.counters["failed"] += 1
        self.counters["worker_lost"] += 1
        log.warning("TFTP %r to %s failed: its worker died", transfer.name, transfer.client_ip)

    def _release(self, transfer: LoopTransfer | HandedTransfer) -> bool:
        """Free the caps a transfer held; False if it was no longer counted."""
        if self._transfers.get(transfer.key) is not transfer:
            return False
        del self._transfers[transfer.key]
        left = self._per_client[transfer.client_ip] - 1
        if left > 0:
            self._per_client[transfer.client_ip] = left
        else:
            del self._per_client[transfer.client_ip]
        return True

    def crashed(self, transfer: LoopTransfer) -> None:
        self.counters["internal_error"] += 1
        log.exception("TFTP transfer to %s:%d failed inside the server", *transfer.peer)
        self._forget(transfer)

    def _forget(self, transfer: LoopTransfer) -> None:
        if not self._release(transfer):
            return
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

    def gso_refused(self, exc: object) -> None:
        if self._gso:
            self._gso = False
            log.info("UDP segmentation offload unavailable (%s): one sendto per DATA packet", exc)
