"""Who gets what: each DHCP request decided from the inventory, as RFC 2131 has a server do.

Pure: reads go through a LeaseBook (the state store is one), and a Decision lists the reply,
where it goes, and the durable effects (bind a lease, record a discovered MAC...) that the
server must commit before the reply leaves, so an ACKed lease survives a crash. The only soft
state kept here is the set of dynamic addresses offered but not yet requested.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Protocol

from cloudctl.config import Config
from cloudctl.inventory import NodeState
from cloudctl.pxe.dhcp.bootmethods import BootChoice, BootOffer, choose_boot, is_ipxe_client
from cloudctl.pxe.dhcp.codec import (
    BROADCAST_FLAG,
    BootOp,
    DhcpCodecError,
    DhcpMessage,
    MessageType,
    reply_to,
)
from cloudctl.pxe.dhcp.options import (
    OptionCode,
    encode_ipv4,
    encode_ipv4_list,
    encode_text,
    encode_u32,
)
from cloudctl.state.models import Lease, Node

CLIENT_PORT = 68
SERVER_PORT = 67
BROADCAST = "255.255.255.255"
ZERO = IPv4Address(0)
OFFER_HOLD_SECONDS = 60.0  # how long an offered dynamic address stays reserved for its client
DECLINE_HOLD_SECONDS = 600.0  # how long a declined address is kept out of the pool
_PXE_VENDOR_PREFIXES = (b"PXEClient", b"HTTPClient")


class LeaseBook(Protocol):
    """The reads the policy needs; every one must be an index lookup."""

    def node_by_mac(self, mac: str) -> Node | None: ...

    def lease_by_mac(self, mac: str) -> Lease | None: ...

    def lease_by_ip(self, ip: IPv4Address) -> Lease | None: ...

    def declined_until(self, ip: IPv4Address) -> float | None: ...


@dataclass(frozen=True)
class DhcpSettings:
    server: IPv4Address
    subnet: ipaddress.IPv4Network
    routers: tuple[IPv4Address, ...]
    dns_servers: tuple[IPv4Address, ...]
    domain: str
    lease_time: int
    discovery: bool
    discovery_lease_time: int
    dynamic_first: IPv4Address
    dynamic_last: IPv4Address
    boot_offer: Callable[[Node | None], BootOffer]

    @classmethod
    def from_config(
        cls, config: Config, boot_offer: Callable[[Node | None], BootOffer]
    ) -> DhcpSettings:
        net = config.network
        return cls(
            server=net.server,
            subnet=net.subnet,
            routers=(net.gateway,),
            dns_servers=net.dns_servers,
            domain=net.domain,
            lease_time=config.dhcp.lease_time,
            discovery=config.dhcp.discovery,
            discovery_lease_time=config.dhcp.discovery_lease_time,
            dynamic_first=net.dynamic_range[0],
            dynamic_last=net.dynamic_range[1],
            boot_offer=boot_offer,
        )


@dataclass(frozen=True)
class BindLease:
    mac: str
    ip: IPv4Address
    expires: float
    hostname: str | None


@dataclass(frozen=True)
class EndLease:
    mac: str
    at: float


@dataclass(frozen=True)
class DeclineAddress:
    ip: IPv4Address
    until: float
    mac: str


@dataclass(frozen=True)
class RecordDiscovered:
    mac: str


Effect = BindLease | EndLease | DeclineAddress | RecordDiscovered


@dataclass(frozen=True)
class Decision:
    """What to do with one request. `outcome` names it for counters and the log.

    `fixed_node` is set on an OFFER or ACK of a node's fixed address: that reply depends only on
    the node's record, the request and (for PXE clients) the node's boot offer, so it may be
    replayed for the same request until the record changes (see replycache.py).
    """

    outcome: str
    reply: DhcpMessage | None = None
    destination: tuple[str, int] | None = None
    effects: tuple[Effect, ...] = ()
    detail: str = ""
    fixed_node: Node | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class _Assignment:
    ip: IPv4Address
    lease_time: int
    hostname: str | None
    node: Node | None
    dynamic: bool


class HeldOffers:
    """Dynamic addresses offered but not yet requested, indexed by address and by MAC.

    Both lookups are O(1); expired holds are swept at most every few seconds, so a discovery
    storm does not make every DISCOVER scan every outstanding offer.
    """

    def __init__(self) -> None:
        self._by_ip: dict[IPv4Address, tuple[str, float]] = {}
        self._by_mac: dict[str, IPv4Address] = {}
        self._next_sweep = 0.0

    def hold(self, ip: IPv4Address, mac: str, until: float) -> None:
        self.release_mac(mac)
        self.release_ip(ip)
        self._by_ip[ip] = (mac, until)
        self._by_mac[mac] = ip

    def for_mac(self, mac: str, now: float) -> IPv4Address | None:
        self._sweep(now)
        ip = self._by_mac.get(mac)
        if ip is not None and self._by_ip[ip][1] <= now:
            self.release_ip(ip)
            return None
        return ip

    def holder(self, ip: IPv4Address, now: float) -> str | None:
        entry = self._by_ip.get(ip)
        return entry[0] if entry is not None and entry[1] > now else None

    def release_ip(self, ip: IPv4Address) -> None:
        entry = self._by_ip.pop(ip, None)
        if entry is not None and self._by_mac.get(entry[0]) == ip:
            del self._by_mac[entry[0]]

    def release_mac(self, mac: str) -> None:
        ip = self._by_mac.pop(mac, None)
        if ip is not None:
            self._by_ip.pop(ip, None)

    def __len__(self) -> int:
        return len(self._by_ip)

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 5.0
        for ip in [ip for ip, (_, until) in self._by_ip.items() if until <= now]:
            self.release_ip(ip)


def is_pxe_client(msg: DhcpMessage) -> bool:
    """PXE/HTTP-boot firmware and iPXE get boot options; an OS's DHCP client does not."""
    vendor = msg.vendor_class_id or b""
    return (
        vendor.startswith(_PXE_VENDOR_PREFIXES)
        or OptionCode.CLIENT_ARCH in msg.options
        or is_ipxe_client(msg)
    )


class DhcpPolicy:
    def __init__(self, settings: DhcpSettings, book: LeaseBook) -> None:
        self.settings = settings
        self.book = book
        self._offers = HeldOffers()
        self._dynamic_cursor = int(settings.dynamic_first)
        # The same for every reply: encoded once, not per packet.
        self._static_options = [
            (OptionCode.SERVER_ID, encode_ipv4(settings.server)),
            (OptionCode.SUBNET_MASK, encode_ipv4(settings.subnet.netmask)),
            (OptionCode.ROUTER, encode_ipv4_list(settings.routers)),
            (OptionCode.DNS_SERVERS, encode_ipv4_list(settings.dns_servers)),
            (OptionCode.DOMAIN_NAME, encode_text(settings.domain)),
        ]
        self._lease_options: dict[int, list[tuple[int, bytes]]] = {}

    def fixed_lease(self, node: Node | None) -> tuple[IPv4Address, int] | None:
        """The fixed address and lease time `node` gets, or None if it is served dynamically."""
        if node is not None and node.state is not NodeState.DISCOVERED and node.ip is not None:
            return node.ip, self.settings.lease_time
        return None

    def release_offer(self, ip: IPv4Address) -> None:
        """`ip` was just ACKed: no dynamic offer holds it any more (as _request does)."""
        self._offers.release_ip(ip)

    def decide(self, msg: DhcpMessage, now: float) -> Decision:
        if msg.op != BootOp.REQUEST:
            return Decision("ignored", detail="not a client request (op is not BOOTREQUEST)")
        if msg.htype != 1 or msg.hlen != 6:
            return Decision(
                "ignored", detail=f"hardware type {msg.htype}/{msg.hlen} is not Ethernet"
            )
        if msg.giaddr != ZERO and msg.giaddr not in self.settings.subnet:
            return Decision(
                "ignored", detail=f"relay {msg.giaddr} is not on {self.settings.subnet}"
            )
        try:
            kind = msg.message_type
            handler = _HANDLERS.get(kind) if kind is not None else None
            if handler is None:
                return Decision("ignored", detail=f"message type {kind!r} is not for a server")
            return handler(self, msg, now)
        except DhcpCodecError as exc:
            return Decision("malformed", detail=str(exc))

    # the message types
    def _discover(self, msg: DhcpMessage, now: float) -> Decision:
        node = self.book.node_by_mac(msg.mac)
        assignment = self._assign(msg, node, now, hint=msg.requested_ip)
        if assignment is None:
            return Decision("ignored", detail=f"unknown MAC {msg.mac} (discovery is off)")
        effects: tuple[Effect, ...] = ()
        if assignment.dynamic:
            self._offers.hold(assignment.ip, msg.mac, now + OFFER_HOLD_SECONDS)
            if node is None:
                effects = (RecordDiscovered(msg.mac),)
        return self._answer(msg, MessageType.DHCPOFFER, assignment, effects, "offer")

    def _request(self, msg: DhcpMessage, now: float) -> Decision:
        server_id, requested, ciaddr = msg.server_id, msg.requested_ip, msg.ciaddr
        if server_id is not None and server_id != self.settings.server:
            self._forget_offer(msg.mac)
            return Decision("ignored", detail=f"{msg.mac} chose server {server_id}")
        if server_id is None and requested is None and ciaddr == ZERO:
            return Decision("malformed", detail="REQUEST without server id, address or ciaddr")
        asked = requested if requested is not None else ciaddr
        node = self.book.node_by_mac(msg.mac)
        assignment = self._assign(msg, node, now, hint=asked)
        if assignment is None:
            # RFC 2131 4.3.2: no record of the client -> stay silent (another server may know it).
            return Decision("ignored", detail=f"unknown MAC {msg.mac} (discovery is off)")
        if asked != assignment.ip:
            return self._nak(msg, f"{asked} is not the address of {msg.mac}")
        expires = now + assignment.lease_time
        bind = BindLease(msg.mac, assignment.ip, expires, assignment.hostname)
        self.release_offer(assignment.ip)
        return self._answer(msg, MessageType.DHCPACK, assignment, (bind,), "ack")

    def _decline(self, msg: DhcpMessage, now: float) -> Decision:
        if msg.server_id not in (None, self.settings.server) or msg.requested_ip is None:
            return Decision("ignored", detail="DECLINE for another server or without an address")
        ip = msg.requested_ip
        node = self.book.node_by_mac(msg.mac)
        detail = f"{msg.mac} declined {ip}: another machine answers ARP for it"
        if node is not None and node.ip == ip:
            detail = (
                f"node {node.name} declined its fixed address {ip}: address conflict on the segment"
            )
        self._offers.release_ip(ip)
        return Decision(
            "declined",
            effects=(DeclineAddress(ip, now + DECLINE_HOLD_SECONDS, msg.mac),),
            detail=detail,
        )

    def _release(self, msg: DhcpMessage, now: float) -> Decision:
        if msg.server_id not in (None, self.settings.server):
            return Decision("ignored", detail="RELEASE for another server")
        self._forget_offer(msg.mac)
        lease = self.book.lease_by_mac(msg.mac)
        if lease is None or lease.ip != msg.ciaddr:
            return Decision(
                "ignored", detail=f"{msg.mac} released {msg.ciaddr}, which it does not hold"
            )
        return Decision(
            "released", effects=(EndLease(msg.mac, now),), detail=f"{msg.mac} released {lease.ip}"
        )

    def _inform(self, msg: DhcpMessage, now: float) -> Decision:
        if msg.ciaddr == ZERO:
            return Decision("malformed", detail="INFORM without ciaddr")
        node = self.book.node_by_mac(msg.mac)
        options = self._common_options(node.name if node and node.ip else None)
        options += self._boot_options(msg, node)[1]
        reply = reply_to(msg, MessageType.DHCPACK, siaddr=self.settings.server, options=options)
        return Decision("inform", reply, self._destination(msg, reply))

    # pieces
    def _assign(
        self, msg: DhcpMessage, node: Node | None, now: float, hint: IPv4Address | None
    ) -> _Assignment | None:
        fixed = self.fixed_lease(node)
        if node is not None and fixed is not None:
            return _Assignment(fixed[0], fixed[1], node.name, node, dynamic=False)
        if not self.settings.discovery:
            return None
        ip = self._dynamic_address(msg.mac, now, hint)
        if ip is None:
            return None
        return _Assignment(ip, self.settings.discovery_lease_time, None, node, dynamic=True)

    def _dynamic_address(
        self, mac: str, now: float, hint: IPv4Address | None
    ) -> IPv4Address | None:
        held = self._offers.for_mac(mac, now)
        if held is not None:
            return held
        if hint is not None and self._dynamic_free(hint, mac, now):
            return hint
        lease = self.book.lease_by_mac(mac)
        if lease is not None and self._dynamic_free(lease.ip, mac, now):
            return lease.ip
        first, last = int(self.settings.dynamic_first), int(self.settings.dynamic_last)
        size = last - first + 1
        for step in range(size):
            candidate = IPv4Address(first + (self._dynamic_cursor - first + step) % size)
            if self._dynamic_free(candidate, mac, now):
                self._dynamic_cursor = int(candidate) + 1
                return candidate
        return None

    def _dynamic_free(self, ip: IPv4Address, mac: str, now: float) -> bool:
        if not self.settings.dynamic_first <= ip <= self.settings.dynamic_last:
            return False
        holder = self._offers.holder(ip, now)
        if holder is not None and holder != mac:
            return False
        declined = self.book.declined_until(ip)
        if declined is not None and declined > now:
            return False
        lease = self.book.lease_by_ip(ip)
        return lease is None or lease.mac == mac or lease.expires <= now

    def _forget_offer(self, mac: str) -> None:
        self._offers.release_mac(mac)

    def _common_options(self, hostname: str | None) -> list[tuple[int, bytes]]:
        options = list(self._static_options)
        if hostname:
            options.append((OptionCode.HOSTNAME, encode_text(hostname)))
        return options

    def _boot_options(
        self, msg: DhcpMessage, node: Node | None
    ) -> tuple[BootChoice | None, list[tuple[int, bytes]]]:
        if not is_pxe_client(msg):
            return None, []
        choice = choose_boot(msg, self.settings.boot_offer(node))
        if not isinstance(choice, BootChoice):
            return None, []
        return choice, list(choice.reply_options())

    def _answer(
        self,
        msg: DhcpMessage,
        kind: MessageType,
        assignment: _Assignment,
        effects: tuple[Effect, ...],
        outcome: str,
    ) -> Decision:
        options = [
            *self._timer_options(assignment.lease_time),
            *self._common_options(assignment.hostname),
        ]
        choice, boot = self._boot_options(msg, assignment.node)
        options += boot
        reply = reply_to(
            msg,
            kind,
            yiaddr=assignment.ip,
            siaddr=self.settings.server if choice else ZERO,
            file=choice.file_field if choice else b"",
            options=options,
        )
        boot_note = f", boot {choice.boot_file}" if choice else ""
        detail = f"{kind.name[4:]} {assignment.ip} to {msg.mac}{boot_note}"
        fixed = None if assignment.dynamic else assignment.node
        return Decision(outcome, reply, self._destination(msg, reply), effects, detail, fixed)

    def _timer_options(self, lease_time: int) -> list[tuple[int, bytes]]:
        cached = self._lease_options.get(lease_time)
        if cached is None:
            cached = self._lease_options[lease_time] = [
                (OptionCode.LEASE_TIME, encode_u32(lease_time)),
                (OptionCode.RENEWAL_TIME, encode_u32(lease_time // 2)),
                (OptionCode.REBINDING_TIME, encode_u32(lease_time * 7 // 8)),
            ]
        return cached

    def _nak(self, msg: DhcpMessage, why: str) -> Decision:
        reply = reply_to(
            msg,
            MessageType.DHCPNAK,
            options=[
                (OptionCode.SERVER_ID, encode_ipv4(self.settings.server)),
                (OptionCode.MESSAGE, encode_text(why)),
            ],
        )
        if msg.giaddr != ZERO:
            reply = replace(reply, flags=reply.flags | BROADCAST_FLAG)  # RFC 2131 4.3.2
        return Decision("nak", reply, self._destination(msg, reply), detail=why)

    def _destination(self, msg: DhcpMessage, reply: DhcpMessage) -> tuple[str, int]:
        """RFC 2131 4.1: to the relay, to a configured client, or broadcast on the link.

        A client without an address that did not ask for broadcast should get a unicast to
        yiaddr at its MAC; that needs an ARP entry injected first, so we broadcast instead,
        which every client accepts.
        """
        if msg.giaddr != ZERO:
            return str(msg.giaddr), SERVER_PORT
        if msg.ciaddr != ZERO and reply.message_type != MessageType.DHCPNAK:
            return str(msg.ciaddr), CLIENT_PORT
        return BROADCAST, CLIENT_PORT


_HANDLERS = {
    MessageType.DHCPDISCOVER: DhcpPolicy._discover,
    MessageType.DHCPREQUEST: DhcpPolicy._request,
    MessageType.DHCPDECLINE: DhcpPolicy._decline,
    MessageType.DHCPRELEASE: DhcpPolicy._release,
    MessageType.DHCPINFORM: DhcpPolicy._inform,
}
