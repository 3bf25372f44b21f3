"""A TFTP transfer worker: a process that runs the `ReadSession`s the server hands it, each over
its own socket and file descriptor, in one tight epoll loop, and reports how each one ended.

Started by `WorkerPool` as `python -m cloudctl.pxe.tftp.worker CONTROL_FD SERVER_PID`. It dies
with the server: PR_SET_PDEATHSIG, and it exits when its control socket reaches EOF.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import replace

from cloudctl.pxe.tftp.codec import ErrorCode, encode_error
from cloudctl.pxe.tftp.handoff import (
    GsoRefused,
    Handoff,
    HandoffError,
    Ready,
    Report,
    SocketCounts,
    decode_message,
    encode_message,
    report_for,
)
from cloudctl.pxe.tftp.session import ReadSession
from cloudctl.pxe.tftp.transport import (
    GSO_REFUSED,
    ReadAhead,
    disable_gso,
    enable_gso,
    send_segmented,
)

__all__ = ["main", "run_worker"]

log = logging.getLogger("cloudctl.pxe.tftp.worker")

# Largest datagram a client legitimately sends on a transfer socket (an ACK is 4 bytes, an
# ERROR a few dozen); anything longer is hostile and only needs to be seen as malformed.
TRANSFER_RECEIVE_SIZE = 1024
# Deadlines are checked this often rather than kept in a timer heap: a retransmission that is
# up to one tick late is harmless (the base timeout is a second), and no ACK pays for a timer.
TIMER_TICK = 0.05
# A hand-off is one JSON message; the RRQ it carries is under 2 KiB with all its options.
CONTROL_MESSAGE_SIZE = 16 * 1024
UNKNOWN_TID_PACKET = encode_error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID")
PR_SET_PDEATHSIG = 1
_DONTWAIT = socket.MSG_DONTWAIT


class _Transfer:
    """One transfer in this worker: the session and the descriptors it owns."""

    __slots__ = ("counts", "file_fd", "gso_chunk", "id", "peer", "session", "sock")

    def __init__(
        self, handoff: Handoff, sock: socket.socket, file_fd: int, session: ReadSession
    ) -> None:
        self.id = handoff.transfer_id
        self.peer = handoff.peer
        self.sock = sock
        self.file_fd = file_fd
        self.session = session
        self.counts = SocketCounts()
        self.gso_chunk = 0

    def send(self, packets: list[bytes]) -> str | None:
        """Send packets; returns why GSO was refused the first time the kernel does."""
        sendto, peer = self.sock.sendto, self.peer
        refused = None
        try:
            if self.gso_chunk:
                try:
                    send_segmented(self._sendto_nowait, peer, packets, self.gso_chunk)
                    return None
                except OSError as exc:
                    if exc.errno not in GSO_REFUSED:
                        raise
                    # Packets of the window already sent go again: the client ignores them.
                    self.gso_chunk = 0
                    disable_gso(self.sock)
                    refused = str(exc)
            for packet in packets:
                sendto(packet, _DONTWAIT, peer)
        except BlockingIOError:
            # Socket buffer full: what was not sent counts as lost; the timer resends it.
            self.counts.send_dropped += 1
        except OSError:
            self.counts.send_errors += 1
        return refused

    def _sendto_nowait(self, data: bytes, peer: tuple[str, int]) -> int:
        return self.sock.sendto(data, _DONTWAIT, peer)

    def close(self) -> None:
        self.sock.close()
        os.close(self.file_fd)


class Worker:
    """The loop of one worker process over its control socket and its transfers' sockets."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.epoll = select.epoll()
        self.transfers: dict[int, _Transfer] = {}  # by socket fd

    def run(self) -> None:
        control_fd = self.control.fileno()
        self.epoll.register(control_fd, select.EPOLLIN)
        self._tell(Ready(os.getpid()))
        transfers, poll, monotonic = self.transfers, self.epoll.poll, time.monotonic
        handle = self._handle
        next_tick = float("inf")
        while True:
            timeout = -1.0 if next_tick == float("inf") else max(0.0, next_tick - monotonic())
            events = poll(timeout)
            now = monotonic()
            for fd, _ in events:
                transfer = transfers.get(fd)
                if transfer is None:
                    if fd == control_fd and not self._on_control(now):
                        return
                    continue
                try:
                    data, addr = transfer.sock.recvfrom(TRANSFER_RECEIVE_SIZE, _DONTWAIT)
                except OSError:  # EAGAIN (errors are not reported on unconnected UDP)
                    continue
                handle(transfer, data, addr, now)
            if transfers:
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + TIMER_TICK
                elif next_tick == float("inf"):
                    next_tick = now + TIMER_TICK
            else:
                next_tick = float("inf")

    def _handle(self, transfer: _Transfer, data: bytes, addr: tuple[str, int], now: float) -> None:
        """One datagram on a transfer's socket: the hot path, once per ACK."""
        try:
            if addr != transfer.peer:
                # RFC 1350: a datagram from another TID is answered, otherwise ignored.
                transfer.counts.unknown_tid += 1
                with contextlib.suppress(OSError):
                    transfer.sock.sendto(UNKNOWN_TID_PACKET, _DONTWAIT, addr)
                return
            session = transfer.session
            packets = session.receive(data, now)
            if packets:
                refused = transfer.send(packets)
                if refused:
                    self._tell(GsoRefused(refused))
            if session.finished:
                self._end(transfer)
        except Exception:
            self._crashed(transfer)

    # -- control --------------------------------------------------------------------------------

    def _on_control(self, now: float) -> bool:
        """Take one hand-off; False once the server has gone (EOF)."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(
                self.control, CONTROL_MESSAGE_SIZE, 2, _DONTWAIT
            )
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            message: object = decode_message(data)
        except HandoffError as exc:
            message = exc
        if not isinstance(message, Handoff) or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            log.error("TFTP worker %d: unexpected control message %r", os.getpid(), message)
            return True
        sock_fd, file_fd = fds
        self._begin(message, socket.socket(fileno=sock_fd), file_fd, now)
        return True

    def _begin(self, handoff: Handoff, sock: socket.socket, file_fd: int, now: float) -> None:
        def pread(offset: int, length: int) -> bytes:
            return os.pread(file_fd, length, offset)

        transfer: _Transfer | None = None
        try:
            reader = ReadAhead(pread, os.fstat(file_fd).st_size)
            session = ReadSession(handoff.request, reader, limits=handoff.limits, now=now)
            reader.align(session.blksize, session.windowsize)
            transfer = _Transfer(handoff, sock, file_fd, session)
            if session.windowsize > 1 and handoff.gso:
                try:
                    transfer.gso_chunk = enable_gso(sock, session.blksize)
                except OSError as exc:
                    self._tell(GsoRefused(str(exc)))
            packets = session.start()
            if packets:
                refused = transfer.send(packets)
                if refused:
                    self._tell(GsoRefused(refused))
            if session.finished:  # an unserved mode, or the file could not be read
                self._tell(report_for(transfer.id, session, transfer.counts, at_start=True))
                transfer.close()
                return
            self.transfers[sock.fileno()] = transfer
            self.epoll.register(sock.fileno(), select.EPOLLIN)
        except Exception:
            log.exception("TFTP worker: cannot start a transfer to %s:%d", *handoff.peer)
            if transfer is not None:
                transfer.close()
            else:
                sock.close()
                os.close(file_fd)
            reason = "internal error in the transfer worker"
            self._tell(Report(handoff.transfer_id, "failed", reason, True, internal_error=True))

    def _tell(self, message: Ready | Report | GsoRefused) -> None:
        # Blocking: if the server is slow to read, this worker waits rather than lose a report.
        with contextlib.suppress(OSError):  # the server is gone: EOF ends the loop next
            self.control.send(encode_message(message))

    # -- transfers ------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for transfer in list(self.transfers.values()):
            session = transfer.session
            deadline = session.deadline
            if deadline is None or now < deadline:
                continue
            try:
                packets = session.timeout(now)
                if packets:
                    transfer.send(packets)
                if session.finished:
                    self._end(transfer)
            except Exception:
                self._crashed(transfer)

    def _end(self, transfer: _Transfer) -> None:
        self._forget(transfer)
        self._tell(report_for(transfer.id, transfer.session, transfer.counts, at_start=False))

    def _crashed(self, transfer: _Transfer) -> None:
        log.exception("TFTP worker %d: transfer to %s:%d failed", os.getpid(), *transfer.peer)
        self._forget(transfer)
        report = report_for(transfer.id, transfer.session, transfer.counts, at_start=False)
        reason = "internal error in the transfer worker"
        self._tell(replace(report, state="failed", failed=reason, internal_error=True))

    def _forget(self, transfer: _Transfer) -> None:
        fd = transfer.sock.fileno()
        if self.transfers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
        transfer.close()


def _die_with_parent(server_pid: int) -> bool:
    """Ask the kernel to SIGKILL us when the server dies; False if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The server may have died before prctl: then we were re-parented already.
    return os.getppid() == server_pid


def run_worker(control_fd: int, server_pid: int) -> int:
    if not _die_with_parent(server_pid):
        return 0
    # Ctrl-C in a terminal reaches the whole process group: the server decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    control = socket.socket(fileno=control_fd)
    Worker(control).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return run_worker(int(args[0]), int(args[1]))


if __name__ == "__main__":
    sys.exit(main())
