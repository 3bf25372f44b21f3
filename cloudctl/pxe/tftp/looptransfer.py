"""One read transfer run on the server's asyncio loop (TftpServer with workers=0): its socket
(the server's TID), session, file and timer. Moves bytes and timers; the session decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from cloudctl.pxe.bootfiles import BootFile
from cloudctl.pxe.tftp.codec import ErrorCode, encode_error
from cloudctl.pxe.tftp.session import ReadSession
from cloudctl.pxe.tftp.transport import GSO_REFUSED, disable_gso, send_segmented

__all__ = ["LoopTransfer"]

log = logging.getLogger("cloudctl.pxe.tftp.server")

# Largest datagram a client legitimately sends on a transfer socket (an ACK is 4 bytes, an
# ERROR a few dozen); anything longer is hostile and only needs to be seen as malformed.
TRANSFER_RECEIVE_SIZE = 1024
# Datagrams one transfer handles per wake-up before the others get their turn.
TRANSFER_BURST = 64
UNKNOWN_TID_PACKET = encode_error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID")


class _Server(Protocol):
    """What a transfer needs of TftpServer."""

    counters: Counter[str]
    loop: asyncio.AbstractEventLoop
    loop_time: Callable[[], float]

    def end(self, transfer: LoopTransfer) -> None: ...
    def crashed(self, transfer: LoopTransfer) -> None: ...
    def gso_refused(self, exc: object) -> None: ...


class LoopTransfer:
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
        server: _Server,
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
                    if exc.errno not in GSO_REFUSED:
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
        send_segmented(self.sock.sendto, self.peer, packets, self.gso_chunk)

    def _stop_gso(self, exc: OSError) -> None:
        # Packets of the window already sent go again: the client ignores duplicates, and
        # this happens once per server.
        self.gso_chunk = 0
        disable_gso(self.sock)
        self.server.gso_refused(exc)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.sock.close()
        self.file.close()
