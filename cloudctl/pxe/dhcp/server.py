"""The DHCP server's transport: a UDP socket on port 67 bound to one interface.

Moves bytes only: each wakeup reads every datagram queued (up to a batch), asks the reply cache
(which asks the policy when it must) for an answer, commits its effects, then sends. Replies that
need a write wait in a queue; one flusher commits everything queued since its last commit in a
single write and then sends those replies (group commit: one fsync for a burst of ACKs, and no
ACK before its lease is on disk). Malformed packets are counted and dropped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter, deque

from cloudctl.pxe.dhcp.codec import DhcpCodecError, encode
from cloudctl.pxe.dhcp.policy import (
    DeclineAddress,
    DhcpPolicy,
    Effect,
    EndLease,
    RecordDiscovered,
)
from cloudctl.pxe.dhcp.replycache import Answer, ReplyCache
from cloudctl.state import StateError, StateStore

log = logging.getLogger(__name__)


# A rack powering on sends thousands of DISCOVERs at once; the default ~200 KiB buffer would
# drop most of them before the loop reads them. Much more than a few thousand packets would
# only hold requests so long that their clients have given up (slow recovery from overload).
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# A reply still waiting for its commit after this long is dropped: clients retransmit after
# 1-4 s, so sending it would only add load while the server is overloaded.
STALE_AFTER_SECONDS = 2.0
MAX_WAITING = 20_000
# A commit costs ~50 us of CPU however few leases it carries, and a fast disk finishes one in
# ~0.2 ms, so under a steady stream each commit would carry one or two ACKs. When ACKs come
# faster than LINGER_ABOVE_PER_SECOND, the flusher first lets them gather for LINGER_SECONDS:
# ten times fewer commits at a few thousand ACKs/s (half the CPU per ACK), for ~2 ms more per
# ACK. Slower, or with a batch this big already, it commits at once.
LINGER_SECONDS = 0.002
LINGER_ABOVE_PER_SECOND = 1000.0
FULL_BATCH = 64
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not export it
# Datagrams read per wakeup: enough to amortise the event loop's poll, few enough that the
# flusher and the API still get the loop every millisecond or so under a storm.
READ_BATCH = 64
RECEIVE_SIZE = 65_536  # the largest UDP payload; a DHCP message is rarely over 1,500


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _send_now(sock: socket.socket, payload: bytes, destination: tuple[str, int]) -> bool:
    """Hand a datagram to the kernel; False if its buffer is full for now."""
    try:
        sock.sendto(payload, destination)
    except (BlockingIOError, InterruptedError):
        return False
    return True


class DhcpStartError(Exception):
    """The DHCP socket could not be opened; the message says why."""


class DhcpServer:
    def __init__(
        self, policy: DhcpPolicy, store: StateStore, interface: str, *, port: int = 67
    ) -> None:
        self.policy = policy
        self.replies = ReplyCache(policy)
        self.store = store
        self.interface = interface
        self.port = port
        self.counters: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[tuple[float, Answer]] = []
        self._work = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        # Replies the kernel had no room for yet, sent in order once the socket is writable.
        self._unsent: deque[tuple[bytes, tuple[str, int]]] = deque()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            _grow_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
            # Only this link: a DHCP server answering on the wrong segment hands out bad leases.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            sock.bind(("0.0.0.0", self.port))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if exc.errno == 19:  # ENODEV
                raise DhcpStartError(
                    f"network.interface {self.interface!r} does not exist on this machine"
                ) from None
            raise DhcpStartError(
                f"cannot listen for DHCP on {self.interface} port {self.port}: {exc.strerror}"
            ) from None
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        # A bare reader rather than a DatagramProtocol: one wakeup drains a burst of datagrams.
        self._loop.add_reader(sock.fileno(), self._read_ready)
        self._flusher = asyncio.create_task(self._flush_forever(), name="dhcp-flusher")
        log.info("DHCP listening on %s port %d", self.interface, self.port)

    async def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
            self._flusher = None
        if self._waiting:  # decided before the stop: commit and answer them still
            queued, self._waiting = self._waiting, []
            await self._commit_then_send([answer for _, answer in queued])
        if self._sock is not None:
            if self._unsent and self._loop is not None:
                self._loop.remove_writer(self._sock.fileno())
                self._write_ready()  # what fits now; the rest is dropped with the socket
            self._sock.close()
            self._sock = None

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            self.replies.refresh()  # at most one change-counter read per wakeup, not per packet
        except Exception:
            self.counters["internal_error"] += 1
            log.exception("DHCP cannot tell whether the inventory changed; nothing is replayed")
        debug = log.isEnabledFor(logging.DEBUG)
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters["socket_error"] += 1
                log.debug("DHCP socket error: %s", exc)
                return
            self.datagram_received(data, addr, debug)

    def datagram_received(self, data: bytes, addr: tuple[str, int], debug: bool = True) -> None:
        self.counters["received"] += 1
        try:
            answer = self.replies.answer(data, time.time())
        except DhcpCodecError as exc:
            self.counters["malformed"] += 1
            log.debug("dropped a malformed packet from %s: %s", addr[0], exc)
            return
        except Exception:
            self.counters["internal_error"] += 1
            log.exception("DHCP policy failed on a packet from %s", addr[0])
            return
        if debug and answer.detail:
            log.debug("%s: %s", answer.outcome, answer.detail)
        if answer.bindings or answer.effects:
            if len(self._waiting) >= MAX_WAITING:
                self.counters["overload"] += 1  # shed load: the client will retry
                return
            self._waiting.append((time.monotonic(), answer))
            self._work.set()
        else:
            self.counters[answer.outcome] += 1
            self._send(answer)

    async def _flush_forever(self) -> None:
        last_commit, rate = 0.0, 0.0  # rate: answers committed per second, last cycle
        while True:
            await self._work.wait()
            if rate > LINGER_ABOVE_PER_SECOND and len(self._waiting) < FULL_BATCH:
                await asyncio.sleep(LINGER_SECONDS)
            self._work.clear()
            queued, self._waiting = self._waiting, []
            fresh_after = time.monotonic() - STALE_AFTER_SECONDS
            batch = [answer for at, answer in queued if at >= fresh_after]
            if len(batch) < len(queued):
                self.counters["stale"] += len(queued) - len(batch)
            if batch:
                await self._commit_then_send(batch)
                now = time.monotonic()
                rate = len(batch) / max(now - last_commit, 1e-6)
                last_commit = now

    async def _commit_then_send(self, batch: list[Answer]) -> None:
        # Discovery, release and decline effects: concurrent, so they share one commit too.
        failed = set()
        special = [answer for answer in batch if answer.effects]
        if special:
            outcomes = await asyncio.gather(
                *(self._apply_special(answer) for answer in special), return_exceptions=True
            )
            for answer, outcome in zip(special, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, StateError):
                        raise outcome
                    failed.add(id(answer))
                    self._refused(answer, outcome)
        committed = [answer for answer in batch if id(answer) not in failed] if failed else batch
        binds = [binding for answer in committed for binding in answer.bindings]
        if binds:
            try:
                await self.store.bind_leases(binds)
            except StateError as exc:
                for answer in committed:
                    self._refused(answer, exc)
                return
        counters = self.counters
        for answer in committed:
            if answer.outcome == "declined":
                log.warning("%s", answer.detail)
            # Counted once committed, so "ack" means ACKs whose lease is on disk.
            counters[answer.outcome] += 1
            self._send(answer)

    async def _apply_special(self, answer: Answer) -> None:
        for effect in answer.effects:
            await self._apply(effect)

    def _refused(self, answer: Answer, exc: StateError) -> None:
        # No reply rather than an ACK we could not record: the client simply retries.
        self.counters["store_error"] += 1
        log.error("DHCP %s not sent, the state store refused it: %s", answer.outcome, exc)

    async def _apply(self, effect: Effect) -> None:
        match effect:
            case EndLease(mac, at):
                await self.store.end_lease(mac, at)
            case DeclineAddress(ip, until, mac):
                await self.store.decline_address(ip, until, mac)
            case RecordDiscovered(mac):
                node = await self.store.record_discovered(mac)
                log.info("discovered unknown MAC %s as node %s", mac, node.name)

    def _send(self, answer: Answer) -> None:
        reply, destination, sock = answer.reply, answer.destination, self._sock
        if reply is None or destination is None or sock is None:
            return
        try:
            payload = reply if isinstance(reply, bytes) else encode(reply)
        except DhcpCodecError as exc:
            self.counters["send_error"] += 1
            log.warning("cannot send DHCP %s to %s: %s", answer.outcome, destination, exc)
            return
        try:
            if self._unsent or not _send_now(sock, payload, destination):
                self._hold(payload, destination)
        except OSError as exc:
            self.counters["socket_error"] += 1  # what asyncio's transport reported them as
            log.debug("DHCP socket error sending to %s: %s", destination, exc)
            return
        self.counters["sent"] += 1

    def _hold(self, payload: bytes, destination: tuple[str, int]) -> None:
        if len(self._unsent) >= MAX_WAITING:
            raise OSError(errno.ENOBUFS, "the socket's send buffer is full")
        self._unsent.append((payload, destination))  # after any held before it: keep the order
        if len(self._unsent) == 1 and self._loop is not None and self._sock is not None:
            self._loop.add_writer(self._sock.fileno(), self._write_ready)

    def _write_ready(self) -> None:
        sock = self._sock
        while self._unsent and sock is not None:
            payload, destination = self._unsent[0]
            try:
                sock.sendto(payload, destination)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters["socket_error"] += 1
                log.debug("DHCP socket error sending to %s: %s", destination, exc)
            self._unsent.popleft()
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())
