"""DhcpServer over loopback with an in-memory store: batched reads, group commit, send backlog."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from ipaddress import IPv4Address

import pytest

from cloudctl.inventory import NodeState, Role
from cloudctl.pxe.dhcp import policy as policy_module
from cloudctl.pxe.dhcp.bootmethods import BootOffer
from cloudctl.pxe.dhcp.codec import (
    BootOp,
    DhcpMessage,
    MessageType,
    chaddr_for_mac,
    decode,
    encode,
)
from cloudctl.pxe.dhcp.options import DhcpOptions, OptionCode, encode_ipv4, encode_u8
from cloudctl.pxe.dhcp.policy import DhcpPolicy, DhcpSettings
from cloudctl.pxe.dhcp.replycache import Answer
from cloudctl.pxe.dhcp.server import DhcpServer
from cloudctl.state import StateError
from cloudctl.state.models import Node

SERVER = IPv4Address("127.0.0.2")
RELAY = "127.0.0.1"
NODES = 20


def _mac(index: int) -> str:
    return f"52:54:00:00:01:{index:02x}"


def _ip(index: int) -> IPv4Address:
    return IPv4Address("127.0.1.10") + index


class Store:
    """The reads the policy needs and the lease write the server makes; the first write waits."""

    def __init__(self) -> None:
        self.nodes = {
            _mac(i): Node(f"hn{i}", _mac(i), Role.HNODE, _ip(i), NodeState.REGISTERED, 0.0, 0.0)
            for i in range(NODES)
        }
        self.writes: list[list[tuple]] = []
        self.release = asyncio.Event()
        self.fail = False

    def node_by_mac(self, mac):
        return self.nodes.get(mac)

    def lease_by_mac(self, mac):
        return None

    def lease_by_ip(self, ip):
        return None

    def declined_until(self, ip):
        return None

    def last_change(self):
        return 1

    async def bind_leases(self, leases):
        self.writes.append(list(leases))
        await self.release.wait()
        if self.fail:
            raise StateError("disk full")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _relayed(kind: MessageType, index: int, xid: int) -> bytes:
    options = [(OptionCode.MESSAGE_TYPE, encode_u8(kind))]
    if kind == MessageType.DHCPREQUEST:
        options += [
            (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
            (OptionCode.REQUESTED_IP, encode_ipv4(_ip(index))),
        ]
    message = DhcpMessage(
        op=BootOp.REQUEST,
        xid=xid,
        hops=1,
        giaddr=RELAY,
        chaddr=chaddr_for_mac(_mac(index)),
        options=DhcpOptions(options),
    )
    return encode(message)


def _policy(store: Store) -> DhcpPolicy:
    settings = DhcpSettings(
        server=SERVER,
        subnet=ipaddress.IPv4Network("127.0.0.0/8"),
        routers=(IPv4Address("127.0.0.1"),),
        dns_servers=(SERVER,),
        domain="cloud.test",
        lease_time=3600,
        discovery=False,
        discovery_lease_time=60,
        dynamic_first=IPv4Address("127.0.2.1"),
        dynamic_last=IPv4Address("127.0.2.9"),
        boot_offer=lambda node: BootOffer(ipxe_script_url="http://127.0.0.2/{mac}.ipxe"),
    )
    return DhcpPolicy(settings, store)


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def _drain(sock: socket.socket) -> list[bytes]:
    replies = []
    while True:
        try:
            replies.append(sock.recv(2048))
        except BlockingIOError:
            return replies


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: SO_BINDTODEVICE")
def test_acks_leave_only_after_their_group_commit(monkeypatch):
    async def scenario():
        port, relay_port = _free_udp_port(), _free_udp_port()
        monkeypatch.setattr(policy_module, "SERVER_PORT", relay_port)  # where relays listen
        store = Store()
        server = DhcpServer(_policy(store), store, "lo", port=port)  # type: ignore[arg-type]
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind((RELAY, relay_port))
        relay.setblocking(False)
        await server.start()
        try:
            relay.sendto(_relayed(MessageType.DHCPDISCOVER, 0, 1), (RELAY, port))
            await _until(lambda: server.counters["sent"] == 1)
            offer = decode(relay.recv(2048))
            assert (offer.message_type, offer.yiaddr, offer.xid) == (
                MessageType.DHCPOFFER,
                _ip(0),
                1,
            )

            relay.sendto(_relayed(MessageType.DHCPREQUEST, 0, 100), (RELAY, port))
            await _until(lambda: len(store.writes) == 1)  # the first commit is under way
            for index in range(1, NODES):
                relay.sendto(_relayed(MessageType.DHCPREQUEST, index, 100 + index), (RELAY, port))
            relay.sendto(b"not dhcp", (RELAY, port))
            await _until(lambda: server.counters["received"] == NODES + 2)
            await asyncio.sleep(0.05)
            assert _drain(relay) == []  # nothing is on disk yet, so no ACK left
            assert server.counters["ack"] == 0 and server.counters["malformed"] == 1

            store.release.set()
            await _until(lambda: server.counters["ack"] == NODES)
            acks = [decode(reply) for reply in _drain(relay)]
            await _until(lambda: len(acks) + len(_drain(relay)) >= NODES, timeout=1)
            assert sorted(ack.xid for ack in acks) == [100 + i for i in range(NODES)]
            assert all(ack.message_type == MessageType.DHCPACK for ack in acks)
            # One write for the first ACK, one for everything that queued behind it.
            assert [len(write) for write in store.writes] == [1, NODES - 1]
            assert store.writes[1][0][:2] == (_mac(1), _ip(1))
            assert server.counters["sent"] == NODES + 1
        finally:
            await server.close()
            relay.close()

    asyncio.run(scenario())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: SO_BINDTODEVICE")
def test_no_ack_when_the_store_refuses_the_lease(monkeypatch):
    async def scenario():
        port, relay_port = _free_udp_port(), _free_udp_port()
        monkeypatch.setattr(policy_module, "SERVER_PORT", relay_port)
        store = Store()
        store.fail = True
        store.release.set()
        server = DhcpServer(_policy(store), store, "lo", port=port)  # type: ignore[arg-type]
        relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind((RELAY, relay_port))
        relay.setblocking(False)
        await server.start()
        try:
            relay.sendto(_relayed(MessageType.DHCPREQUEST, 3, 7), (RELAY, port))
            await _until(lambda: server.counters["store_error"] == 1)
            await asyncio.sleep(0.05)
            assert _drain(relay) == []
            assert server.counters["ack"] == 0 and server.counters["sent"] == 0
        finally:
            await server.close()
            relay.close()

    asyncio.run(scenario())


class CloggedSocket(socket.socket):
    """A UDP socket whose first sends find the kernel's buffer full."""

    clogged = 2

    def sendto(self, *args):  # type: ignore[override]
        if self.clogged:
            self.clogged -= 1
            raise BlockingIOError
        return super().sendto(*args)


def test_replies_the_kernel_cannot_take_yet_are_sent_later_in_order():
    async def scenario():
        store = Store()
        server = DhcpServer(_policy(store), store, "lo")  # type: ignore[arg-type]
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        sock = CloggedSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        server._sock, server._loop = sock, asyncio.get_running_loop()
        destination = receiver.getsockname()
        for payload in (b"one", b"two", b"three"):
            server._send(Answer("offer", payload, destination))
        assert server.counters["sent"] == 3
        assert len(server._unsent) == 3  # the first found the buffer full, the others queue behind
        await _until(lambda: not server._unsent)  # sent when the socket is writable again
        receiver.settimeout(2)
        assert [receiver.recv(64) for _ in range(3)] == [b"one", b"two", b"three"]
        await server.close()
        receiver.close()

    asyncio.run(scenario())


def test_a_reply_the_socket_refuses_is_a_socket_error_not_sent():
    async def scenario():
        store = Store()
        server = DhcpServer(_policy(store), store, "lo")  # type: ignore[arg-type]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no SO_BROADCAST: EACCES
        sock.setblocking(False)
        server._sock, server._loop = sock, asyncio.get_running_loop()
        server._send(Answer("offer", b"reply", ("255.255.255.255", 68)))
        assert server.counters["socket_error"] == 1 and server.counters["sent"] == 0
        await server.close()

    asyncio.run(scenario())
