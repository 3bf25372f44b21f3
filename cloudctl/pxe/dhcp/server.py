"""The DHCP server's transport: a UDP socket on port 67 bound to one interface.

Moves bytes only: decode, ask the policy, commit the decision's effects, then send. Replies
that need a write wait in a queue; one flusher commits everything queued since its last
commit in a single write and then sends those replies (group commit: one fsync for a burst of
ACKs, and no ACK before its lease is on disk). Malformed packets are counted and dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter

from cloudctl.pxe.dhcp.codec import DhcpCodecError, decode, encode
from cloudctl.pxe.dhcp.policy import (
    BindLease,
    Decision,
    DeclineAddress,
    DhcpPolicy,
    Effect,
    EndLease,
    RecordDiscovered,
)
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
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not export it


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class DhcpStartError(Exception):
    """The DHCP socket could not be opened; the message says why."""


class DhcpServer(asyncio.DatagramProtocol):
    def __init__(
        self, policy: DhcpPolicy, store: StateStore, interface: str, *, port: int = 67
    ) -> None:
        self.policy = policy
        self.store = store
        self.interface = interface
        self.port = port
        self.counters: Counter[str] = Counter()
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: list[tuple[float, Decision]] = []
        self._work = asyncio.Event()
        self._flusher: asyncio.Task | None = None

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
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._flusher = asyncio.create_task(self._flush_forever(), name="dhcp-flusher")
        log.info("DHCP listening on %s port %d", self.interface, self.port)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
            self._flusher = None
        if self._waiting:  # decided before the stop: commit and answer them still
            queued, self._waiting = self._waiting, []
            await self._commit_then_send([decision for _, decision in queued])
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters["received"] += 1
        try:
            msg = decode(data)
        except DhcpCodecError as exc:
            self.counters["malformed"] += 1
            log.debug("dropped a malformed packet from %s: %s", addr[0], exc)
            return
        try:
            decision = self.policy.decide(msg, time.time())
        except Exception:
            self.counters["internal_error"] += 1
            log.exception("DHCP policy failed on a packet from %s", addr[0])
            return
        if decision.detail:
            log.debug("%s: %s", decision.outcome, decision.detail)
        if decision.effects:
            if len(self._waiting) >= MAX_WAITING:
                self.counters["overload"] += 1  # shed load: the client will retry
                return
            self._waiting.append((time.monotonic(), decision))
            self._work.set()
        else:
            self.counters[decision.outcome] += 1
            self._send(decision)

    def error_received(self, exc: Exception) -> None:
        self.counters["socket_error"] += 1
        log.debug("DHCP socket error: %s", exc)

    async def _flush_forever(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            queued, self._waiting = self._waiting, []
            fresh_after = time.monotonic() - STALE_AFTER_SECONDS
            batch = [decision for at, decision in queued if at >= fresh_after]
            if len(batch) < len(queued):
                self.counters["stale"] += len(queued) - len(batch)
            if batch:
                await self._commit_then_send(batch)

    async def _commit_then_send(self, batch: list[Decision]) -> None:
        # Discovery, release and decline effects: concurrent, so they share one commit too.
        special = [d for d in batch if any(not isinstance(e, BindLease) for e in d.effects)]
        outcomes = await asyncio.gather(
            *(self._apply_special(d) for d in special), return_exceptions=True
        )
        failed = {}
        for decision, outcome in zip(special, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, StateError):
                    raise outcome
                failed[id(decision)] = outcome
                self._refused(decision, outcome)
        committed = [d for d in batch if id(d) not in failed]
        binds = [
            (e.mac, e.ip, e.expires, e.hostname)
            for d in committed
            for e in d.effects
            if isinstance(e, BindLease)
        ]
        if binds:
            try:
                await self.store.bind_leases(binds)
            except StateError as exc:
                for decision in committed:
                    self._refused(decision, exc)
                return
        for decision in committed:
            if decision.outcome == "declined":
                log.warning("%s", decision.detail)
            # Counted once committed, so "ack" means ACKs whose lease is on disk.
            self.counters[decision.outcome] += 1
            self._send(decision)

    async def _apply_special(self, decision: Decision) -> None:
        for effect in decision.effects:
            if not isinstance(effect, BindLease):
                await self._apply(effect)

    def _refused(self, decision: Decision, exc: StateError) -> None:
        # No reply rather than an ACK we could not record: the client simply retries.
        self.counters["store_error"] += 1
        log.error("DHCP %s not sent, the state store refused it: %s", decision.outcome, exc)

    async def _apply(self, effect: Effect) -> None:
        match effect:
            case EndLease(mac, at):
                await self.store.end_lease(mac, at)
            case DeclineAddress(ip, until, mac):
                await self.store.decline_address(ip, until, mac)
            case RecordDiscovered(mac):
                node = await self.store.record_discovered(mac)
                log.info("discovered unknown MAC %s as node %s", mac, node.name)

    def _send(self, decision: Decision) -> None:
        if decision.reply is None or decision.destination is None or self._transport is None:
            return
        try:
            self._transport.sendto(encode(decision.reply), decision.destination)
        except (OSError, DhcpCodecError) as exc:
            self.counters["send_error"] += 1
            log.warning(
                "cannot send DHCP %s to %s: %s", decision.outcome, decision.destination, exc
            )
            return
        self.counters["sent"] += 1
