"""DhcpPolicy: RFC 2131 server decisions over an in-memory lease book."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest

from cloudctl.inventory import NodeState, Role
from cloudctl.pxe.dhcp.bootmethods import BootOffer
from cloudctl.pxe.dhcp.codec import BROADCAST_FLAG, BootOp, DhcpMessage, MessageType, chaddr_for_mac
from cloudctl.pxe.dhcp.options import (
    IPXE_NO_PXEDHCP,
    DhcpOptions,
    OptionCode,
    encode_client_architectures,
    encode_ipv4,
    encode_u8,
)
from cloudctl.pxe.dhcp.policy import (
    BindLease,
    DeclineAddress,
    DhcpPolicy,
    DhcpSettings,
    EndLease,
    RecordDiscovered,
)
from cloudctl.state.models import Lease, Node

SERVER = IPv4Address("10.20.0.2")
KNOWN = "52:54:00:00:00:01"
STRANGER = "52:54:00:00:00:99"
NOW = 1_000_000.0


@dataclass
class Book:
    nodes: dict[str, Node] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    declined: dict[IPv4Address, float] = field(default_factory=dict)

    def node_by_mac(self, mac):
        return self.nodes.get(mac)

    def lease_by_mac(self, mac):
        return self.leases.get(mac)

    def lease_by_ip(self, ip):
        return next((lease for lease in self.leases.values() if lease.ip == ip), None)

    def declined_until(self, ip):
        return self.declined.get(ip)


def _settings(discovery=False):
    return DhcpSettings(
        server=SERVER,
        subnet=ipaddress.IPv4Network("10.20.0.0/24"),
        routers=(IPv4Address("10.20.0.1"),),
        dns_servers=(SERVER,),
        domain="cloud.test",
        lease_time=3600,
        discovery=discovery,
        discovery_lease_time=60,
        dynamic_first=IPv4Address("10.20.0.200"),
        dynamic_last=IPv4Address("10.20.0.202"),
        boot_offer=lambda node: BootOffer(ipxe_script_url="http://10.20.0.2:8080/boot/{mac}.ipxe"),
    )


def _policy(discovery=False):
    book = Book()
    book.nodes[KNOWN] = Node(
        "hn1", KNOWN, Role.HNODE, IPv4Address("10.20.0.10"), NodeState.REGISTERED, 0.0, 0.0
    )
    return DhcpPolicy(_settings(discovery), book), book


def _msg(kind, mac=KNOWN, *, options=(), **fields):
    opts = [(OptionCode.MESSAGE_TYPE, encode_u8(kind)), *options]
    header = {"op": BootOp.REQUEST, "xid": 0x1234, "chaddr": chaddr_for_mac(mac), **fields}
    return DhcpMessage(options=DhcpOptions(opts), **header)


PXE_BIOS = [
    (OptionCode.CLIENT_ARCH, encode_client_architectures([0])),
    (OptionCode.VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001"),
]


def test_registered_node_gets_its_fixed_address_and_options():
    policy, _ = _policy()
    decision = policy.decide(_msg(MessageType.DHCPDISCOVER), NOW)
    reply = decision.reply
    assert decision.outcome == "offer" and decision.effects == ()
    assert reply.message_type == MessageType.DHCPOFFER
    assert reply.yiaddr == IPv4Address("10.20.0.10")
    assert reply.server_id == SERVER
    assert reply.lease_time == 3600 and reply.renewal_time == 1800 and reply.rebinding_time == 3150
    assert reply.subnet_mask == IPv4Address("255.255.255.0")
    assert reply.routers == (IPv4Address("10.20.0.1"),)
    assert reply.dns_servers == (SERVER,)
    assert reply.hostname == "hn1" and reply.domain_name == "cloud.test"
    assert reply.bootfile_name is None  # an OS DHCP client gets no boot program
    assert decision.destination == ("255.255.255.255", 68)


def test_bios_pxe_gets_undionly_then_ipxe_gets_its_script():
    policy, _ = _policy()
    first = policy.decide(_msg(MessageType.DHCPDISCOVER, options=PXE_BIOS), NOW).reply
    assert first.bootfile_name == "undionly.kpxe"
    assert first.siaddr == SERVER and first.file.rstrip(b"\0") == b"undionly.kpxe"
    ipxe = [*PXE_BIOS, (OptionCode.USER_CLASS, b"iPXE")]
    second = policy.decide(_msg(MessageType.DHCPDISCOVER, options=ipxe), NOW).reply
    assert second.bootfile_name == f"http://10.20.0.2:8080/boot/{KNOWN}.ipxe"
    assert second.options[OptionCode.IPXE_ENCAP] == IPXE_NO_PXEDHCP


def test_request_selecting_acks_and_binds():
    policy, _ = _policy()
    request = _msg(
        MessageType.DHCPREQUEST,
        options=[
            (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
            (OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.10")),
        ],
    )
    decision = policy.decide(request, NOW)
    assert decision.outcome == "ack"
    assert decision.reply.message_type == MessageType.DHCPACK
    assert decision.effects == (BindLease(KNOWN, IPv4Address("10.20.0.10"), NOW + 3600, "hn1"),)


def test_request_for_another_server_is_ignored():
    policy, _ = _policy()
    request = _msg(
        MessageType.DHCPREQUEST,
        options=[
            (OptionCode.SERVER_ID, encode_ipv4("10.20.0.3")),
            (OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.10")),
        ],
    )
    assert policy.decide(request, NOW).reply is None


def test_init_reboot_with_the_wrong_address_is_naked():
    policy, _ = _policy()
    request = _msg(
        MessageType.DHCPREQUEST, options=[(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.77"))]
    )
    decision = policy.decide(request, NOW)
    assert decision.outcome == "nak"
    assert decision.reply.message_type == MessageType.DHCPNAK
    assert decision.reply.yiaddr == IPv4Address(0)
    assert decision.destination == ("255.255.255.255", 68)
    assert decision.effects == ()


def test_renewal_is_unicast_to_the_client():
    policy, _ = _policy()
    decision = policy.decide(_msg(MessageType.DHCPREQUEST, ciaddr="10.20.0.10"), NOW)
    assert decision.outcome == "ack"
    assert decision.destination == ("10.20.0.10", 68)
    assert decision.reply.ciaddr == IPv4Address("10.20.0.10")


def test_relayed_request_goes_back_to_the_relay_and_option_82_is_echoed():
    policy, _ = _policy()
    discover = _msg(
        MessageType.DHCPDISCOVER,
        giaddr="10.20.0.1",
        options=[(OptionCode.RELAY_AGENT_INFO, b"\x01\x04port")],
    )
    decision = policy.decide(discover, NOW)
    assert decision.destination == ("10.20.0.1", 67)
    assert decision.reply.relay_agent_info == b"\x01\x04port"
    foreign = _msg(MessageType.DHCPDISCOVER, giaddr="192.0.2.1")
    assert policy.decide(foreign, NOW).outcome == "ignored"
    nak = policy.decide(
        _msg(
            MessageType.DHCPREQUEST,
            giaddr="10.20.0.1",
            options=[(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.77"))],
        ),
        NOW,
    )
    assert nak.reply.flags & BROADCAST_FLAG


def test_unknown_mac_gets_nothing_without_discovery():
    policy, _ = _policy(discovery=False)
    assert policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW).outcome == "ignored"
    request = _msg(
        MessageType.DHCPREQUEST,
        STRANGER,
        options=[(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.200"))],
    )
    assert policy.decide(request, NOW).reply is None  # silent, not NAK: we have no record


def test_discovery_offers_a_short_dynamic_lease_and_records_the_mac():
    policy, book = _policy(discovery=True)
    offer = policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW)
    assert offer.reply.yiaddr == IPv4Address("10.20.0.200")
    assert offer.reply.lease_time == 60
    assert offer.effects == (RecordDiscovered(STRANGER),)
    # a second client does not get the address offered to the first
    other = policy.decide(_msg(MessageType.DHCPDISCOVER, "52:54:00:00:00:98"), NOW)
    assert other.reply.yiaddr == IPv4Address("10.20.0.201")
    ack = policy.decide(
        _msg(
            MessageType.DHCPREQUEST,
            STRANGER,
            options=[
                (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
                (OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.200")),
            ],
        ),
        NOW,
    )
    assert ack.effects == (BindLease(STRANGER, IPv4Address("10.20.0.200"), NOW + 60, None),)
    book.leases[STRANGER] = Lease(STRANGER, IPv4Address("10.20.0.200"), NOW + 60, None, NOW)
    # the same client comes back later and gets the same address
    again = policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW + 500)
    assert again.reply.yiaddr == IPv4Address("10.20.0.200")


def test_dynamic_pool_exhaustion_and_expiry():
    policy, book = _policy(discovery=True)
    for i, mac in enumerate(["52:54:00:00:01:01", "52:54:00:00:01:02", "52:54:00:00:01:03"]):
        book.leases[mac] = Lease(mac, IPv4Address(f"10.20.0.{200 + i}"), NOW + 60, None, NOW)
    assert policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW).outcome == "ignored"
    later = policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW + 61)
    assert later.reply.yiaddr == IPv4Address("10.20.0.200")


def test_decline_and_release():
    policy, book = _policy(discovery=True)
    declined = policy.decide(
        _msg(
            MessageType.DHCPDECLINE,
            STRANGER,
            options=[
                (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
                (OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.200")),
            ],
        ),
        NOW,
    )
    assert declined.effects == (DeclineAddress(IPv4Address("10.20.0.200"), NOW + 600, STRANGER),)
    assert declined.reply is None
    book.declined[IPv4Address("10.20.0.200")] = NOW + 600
    assert policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW).reply.yiaddr == IPv4Address(
        "10.20.0.201"
    )
    fixed = policy.decide(
        _msg(
            MessageType.DHCPDECLINE,
            KNOWN,
            options=[(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.10"))],
        ),
        NOW,
    )
    assert "node hn1 declined its fixed address 10.20.0.10" in fixed.detail

    book.leases[KNOWN] = Lease(KNOWN, IPv4Address("10.20.0.10"), NOW + 3600, "hn1", NOW)
    released = policy.decide(
        _msg(
            MessageType.DHCPRELEASE,
            ciaddr="10.20.0.10",
            options=[(OptionCode.SERVER_ID, encode_ipv4(SERVER))],
        ),
        NOW,
    )
    assert released.effects == (EndLease(KNOWN, NOW),)
    bogus = policy.decide(_msg(MessageType.DHCPRELEASE, ciaddr="10.20.0.11"), NOW)
    assert bogus.effects == ()


def test_inform_gets_options_but_no_lease():
    policy, _ = _policy()
    decision = policy.decide(_msg(MessageType.DHCPINFORM, ciaddr="10.20.0.10"), NOW)
    assert decision.reply.message_type == MessageType.DHCPACK
    assert decision.reply.lease_time is None
    assert decision.reply.yiaddr == IPv4Address(0)
    assert decision.destination == ("10.20.0.10", 68)
    assert decision.effects == ()


@pytest.mark.parametrize("fields", [{"op": BootOp.REPLY}, {"htype": 6}, {"hlen": 16}])
def test_non_ethernet_or_replies_are_ignored(fields):
    policy, _ = _policy()
    assert policy.decide(_msg(MessageType.DHCPDISCOVER, **fields), NOW).outcome == "ignored"


def test_malformed_option_value_is_reported_not_raised():
    policy, _ = _policy()
    request = _msg(MessageType.DHCPREQUEST, options=[(OptionCode.REQUESTED_IP, b"\x01\x02")])
    assert policy.decide(request, NOW).outcome == "malformed"


def test_fixed_address_answers_name_their_node_for_the_reply_cache():
    policy, book = _policy(discovery=True)
    known = book.nodes[KNOWN]
    assert policy.decide(_msg(MessageType.DHCPDISCOVER), NOW).fixed_node == known
    selecting = [(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.10"))]
    assert policy.decide(_msg(MessageType.DHCPREQUEST, options=selecting), NOW).fixed_node == known
    assert policy.fixed_lease(known) == (IPv4Address("10.20.0.10"), 3600)
    dynamic = policy.decide(_msg(MessageType.DHCPDISCOVER, STRANGER), NOW)
    assert dynamic.outcome == "offer" and dynamic.fixed_node is None
    wrong = [(OptionCode.REQUESTED_IP, encode_ipv4("10.20.0.77"))]
    assert policy.decide(_msg(MessageType.DHCPREQUEST, options=wrong), NOW).fixed_node is None
    assert policy.fixed_lease(None) is None
