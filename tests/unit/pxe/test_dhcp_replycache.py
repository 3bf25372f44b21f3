"""ReplyCache: replayed answers are byte for byte what the policy answers, and go stale never.

Every check compares the cache with a DhcpPolicy of its own (same settings, same book) that
decides each request from scratch, the way the server answered before the cache existed.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address

import pytest

from cloudctl.inventory import NodeState, Role
from cloudctl.pxe.dhcp.bootmethods import PXELINUX_0, BootOffer
from cloudctl.pxe.dhcp.codec import (
    BROADCAST_FLAG,
    BootOp,
    DhcpCodecError,
    DhcpMessage,
    MessageType,
    chaddr_for_mac,
    decode,
    encode,
)
from cloudctl.pxe.dhcp.options import DhcpOptions, OptionCode, encode_ipv4, encode_u8
from cloudctl.pxe.dhcp.policy import BindLease, DhcpPolicy, DhcpSettings
from cloudctl.pxe.dhcp.replycache import Answer, ReplyCache, request_key
from cloudctl.state.models import Lease, Node

from .test_dhcp_codec import DHCLIENT_DISCOVER, IPXE_DISCOVER, RELAYED_REQUEST, UDHCPC_DISCOVER
from .test_dhcp_fuzz import CORPUS, SEED, layout, mutate

SERVER = IPv4Address("10.0.0.1")
NOW = 1_000_000.0
IPXE_MAC = "52:54:00:12:34:56"  # udhcpc, iPXE and the relayed request in test_dhcp_codec
DHCLIENT_MAC = "52:54:00:ab:cd:ef"
OTHER_MAC = "52:54:00:00:00:07"
SCRIPT_URL = "http://10.0.0.1:8080/boot/{mac}.ipxe"


def _node(name: str, mac: str, ip: str, state: NodeState = NodeState.REGISTERED) -> Node:
    return Node(name, mac, Role.HNODE, IPv4Address(ip), state, 0.0, 0.0)


@dataclass
class Book:
    """An in-memory lease book with the store's change counter and a count of node reads."""

    nodes: dict[str, Node] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    version: int = 1
    node_reads: int = 0

    def node_by_mac(self, mac):
        self.node_reads += 1
        return self.nodes.get(mac)

    def lease_by_mac(self, mac):
        return self.leases.get(mac)

    def lease_by_ip(self, ip):
        return next((lease for lease in self.leases.values() if lease.ip == ip), None)

    def declined_until(self, ip):
        return None

    def last_change(self):
        return self.version

    def change(self, node: Node) -> None:
        """Like an audited store write: the record changes and so does the counter."""
        self.nodes[node.mac] = node
        self.version += 1


class BookWithoutCounter(Book):
    last_change = None  # type: ignore[assignment]


class Offers:
    """A boot_offer callable whose answer a test can change behind the cache's back."""

    def __init__(self) -> None:
        self.offer = BootOffer(ipxe_script_url=SCRIPT_URL)
        self.calls = 0

    def __call__(self, node: Node | None) -> BootOffer:
        self.calls += 1
        return self.offer


def _settings(offers, discovery=False) -> DhcpSettings:
    return DhcpSettings(
        server=SERVER,
        subnet=ipaddress.IPv4Network("10.0.0.0/8"),
        routers=(IPv4Address("10.0.0.254"),),
        dns_servers=(SERVER,),
        domain="cloud.test",
        lease_time=3600,
        discovery=discovery,
        discovery_lease_time=60,
        dynamic_first=IPv4Address("10.9.0.1"),
        dynamic_last=IPv4Address("10.9.0.3"),
        boot_offer=offers,
    )


class Rig:
    def __init__(self, book: Book | None = None, discovery: bool = False, **cache_args) -> None:
        self.book = book if book is not None else Book()
        self.book.nodes.setdefault(IPXE_MAC, _node("hn1", IPXE_MAC, "10.1.0.50"))
        self.book.nodes.setdefault(DHCLIENT_MAC, _node("hn2", DHCLIENT_MAC, "10.1.0.51"))
        self.book.nodes.setdefault(OTHER_MAC, _node("hn3", OTHER_MAC, "10.1.0.52"))
        self.offers = Offers()
        settings = _settings(self.offers, discovery)
        self.cache = ReplyCache(DhcpPolicy(settings, self.book), **cache_args)
        self.reference = DhcpPolicy(settings, self.book)
        self.cache.refresh()

    def check(self, data: bytes, now: float = NOW) -> Answer:
        """The cache's answer, after checking it against the policy's own decision."""
        answer = self.cache.answer(data, now)
        decision = self.reference.decide(decode(data), now)
        expected_reply = encode(decision.reply) if decision.reply is not None else None
        assert answer.outcome == decision.outcome
        assert answer.reply == expected_reply
        assert answer.destination == decision.destination
        assert answer.detail == decision.detail
        binds = [e for e in decision.effects if isinstance(e, BindLease)]
        assert answer.bindings == tuple((e.mac, e.ip, e.expires, e.hostname) for e in binds)
        assert answer.effects == tuple(e for e in decision.effects if e not in binds)
        return answer


def varied(data: bytes, xid: int, secs: int = 0, hops: int = 0) -> bytes:
    """The same request retransmitted: new xid, secs and hops (nothing the answer may depend on)."""
    out = bytearray(data)
    out[3] = hops
    out[4:8] = xid.to_bytes(4, "big")
    out[8:10] = secs.to_bytes(2, "big")
    return bytes(out)


def request(kind: int, mac: str = IPXE_MAC, *, options=(), **fields) -> bytes:
    opts = [(OptionCode.MESSAGE_TYPE, encode_u8(kind)), *options]
    header = {"op": BootOp.REQUEST, "xid": 0x1234, "chaddr": chaddr_for_mac(mac), **fields}
    return encode(DhcpMessage(options=DhcpOptions(opts), **header))


SELECTING = request(
    MessageType.DHCPREQUEST,
    options=[
        (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
        (OptionCode.REQUESTED_IP, encode_ipv4("10.1.0.50")),
    ],
)
RENEWING = request(MessageType.DHCPREQUEST, ciaddr="10.1.0.50")
BROADCAST_DISCOVER = request(MessageType.DHCPDISCOVER, flags=BROADCAST_FLAG)
RELAYED_DISCOVER = request(
    MessageType.DHCPDISCOVER,
    giaddr="10.77.255.254",
    hops=1,
    options=[(OptionCode.CLIENT_ID, b"\x01" + chaddr_for_mac(IPXE_MAC)[:6])],
)
CACHED_SHAPES = [
    UDHCPC_DISCOVER,
    DHCLIENT_DISCOVER,
    IPXE_DISCOVER,
    RELAYED_REQUEST,
    SELECTING,
    RENEWING,
    BROADCAST_DISCOVER,
    RELAYED_DISCOVER,
]


@pytest.mark.parametrize("data", CACHED_SHAPES, ids=range(len(CACHED_SHAPES)))
def test_a_repeated_request_is_replayed_exactly_as_the_policy_answers(data):
    rig = Rig()
    first = rig.check(data)
    assert first.outcome in ("offer", "ack")
    reads = rig.book.node_reads
    for xid, secs, hops in ((0xDEADBEEF, 4, 0), (7, 0, 3), (0, 65535, 255)):
        rig.check(varied(data, xid, secs, hops), NOW + xid % 100)
    assert rig.cache.hits == 3
    # The replay read nothing from the store (the reference policy read once per request).
    assert rig.book.node_reads == reads + 3
    assert len(rig.cache) == 1


def test_the_ack_lease_expires_from_the_time_of_each_request():
    rig = Rig()
    rig.check(SELECTING, NOW)
    later = rig.check(varied(SELECTING, 99), NOW + 500)
    assert later.bindings == (("52:54:00:12:34:56", IPv4Address("10.1.0.50"), NOW + 4100, "hn1"),)


def test_an_audited_change_is_seen_by_the_next_batch():
    rig = Rig()
    assert decode(rig.check(SELECTING).reply).yiaddr == IPv4Address("10.1.0.50")
    rig.book.change(_node("hn1", IPXE_MAC, "10.1.0.60"))
    rig.cache.refresh()
    assert len(rig.cache) == 0
    moved = rig.check(UDHCPC_DISCOVER)
    assert decode(moved.reply).yiaddr == IPv4Address("10.1.0.60")
    assert rig.check(SELECTING).outcome == "nak"  # 10.1.0.50 is no longer its address


class CommittingBook(Book):
    """Like SqliteStore: counts its commits in memory, and counts the change-counter reads."""

    commits = 0
    counter_reads = 0

    def last_change(self):
        self.counter_reads += 1
        return self.version

    def commit(self, node: Node | None = None) -> None:
        if node is not None:
            self.change(node)
        self.commits += 1


def test_the_change_counter_is_read_only_after_a_commit():
    book = CommittingBook()
    rig = Rig(book)
    assert book.counter_reads == 1
    rig.check(SELECTING)
    for _ in range(3):
        rig.cache.refresh()
    assert book.counter_reads == 1  # nothing committed: nothing can have changed
    book.commit()  # a lease write, say: not audited
    rig.cache.refresh()
    assert book.counter_reads == 2 and len(rig.cache) == 1
    book.commit(_node("hn1", IPXE_MAC, "10.1.0.60"))
    rig.cache.refresh()
    assert book.counter_reads == 3 and len(rig.cache) == 0
    assert decode(rig.check(UDHCPC_DISCOVER).reply).yiaddr == IPv4Address("10.1.0.60")


class FailingBook(CommittingBook):
    broken = False

    def last_change(self):
        if self.broken:
            raise RuntimeError("database disk image is malformed")
        return super().last_change()


def test_an_unreadable_change_counter_empties_the_cache():
    book = FailingBook()
    rig = Rig(book)
    rig.check(SELECTING)
    book.broken = True
    book.commit()
    with pytest.raises(RuntimeError):
        rig.cache.refresh()
    assert len(rig.cache) == 0
    rig.check(varied(SELECTING, 1))  # decided by the policy again
    assert rig.cache.hits == 0
    book.broken = False  # readable again: what was kept meanwhile is dropped, to be safe
    rig.cache.refresh()
    assert len(rig.cache) == 0


def test_refresh_without_a_change_keeps_the_entries():
    rig = Rig()
    rig.check(UDHCPC_DISCOVER)
    rig.cache.refresh()
    rig.check(varied(UDHCPC_DISCOVER, 5))
    assert rig.cache.hits == 1


@pytest.mark.parametrize(
    "changed",
    [
        None,  # removed
        _node("hn1", IPXE_MAC, "10.1.0.50", NodeState.DISCOVERED),
        replace(_node("hn1", IPXE_MAC, "10.1.0.50"), name="hn9"),
        _node("hn1", IPXE_MAC, "10.1.0.50", NodeState.DRAINED),
    ],
    ids=["removed", "discovered", "renamed", "drained"],
)
def test_node_changes_reach_the_reply(changed):
    rig = Rig()
    rig.check(UDHCPC_DISCOVER)
    rig.check(SELECTING)
    if changed is None:
        del rig.book.nodes[IPXE_MAC]
        rig.book.version += 1
    else:
        rig.book.change(changed)
    rig.cache.refresh()
    rig.check(varied(UDHCPC_DISCOVER, 1))
    rig.check(varied(SELECTING, 2))


def test_pxe_clients_ask_for_the_boot_offer_again_on_every_hit():
    rig = Rig()
    first = rig.check(IPXE_DISCOVER)
    assert decode(first.reply).bootfile_name == f"http://10.0.0.1:8080/boot/{IPXE_MAC}.ipxe"
    # A BIOS PXE ROM (no iPXE user class or 175): the node's profile changes its boot program
    # without an audited change the cache would see; the next reply follows anyway.
    bios = request(
        MessageType.DHCPDISCOVER,
        options=[
            (OptionCode.CLIENT_ARCH, b"\x00\x00"),
            (OptionCode.VENDOR_CLASS_ID, b"PXEClient:Arch:00000:UNDI:002001"),
        ],
    )
    assert decode(rig.check(bios).reply).bootfile_name == "undionly.kpxe"
    assert decode(rig.check(varied(bios, 3)).reply).bootfile_name == "undionly.kpxe"
    rig.offers.offer = BootOffer(ipxe_script_url=SCRIPT_URL, bios_program=PXELINUX_0)
    assert decode(rig.check(varied(bios, 4)).reply).bootfile_name == "pxelinux.0"
    assert decode(rig.check(varied(bios, 5)).reply).bootfile_name == "pxelinux.0"
    assert rig.cache.hits == 2


def test_os_clients_never_ask_for_a_boot_offer():
    rig = Rig()
    for xid in range(5):
        rig.check(varied(UDHCPC_DISCOVER, xid))
    assert rig.offers.calls == 0
    assert rig.cache.hits == 4


def test_a_failing_boot_offer_is_left_to_the_policy_path():
    rig = Rig()
    rig.check(IPXE_DISCOVER)

    def broken(node):
        raise RuntimeError("profile store unavailable")

    rig.cache.policy.settings = replace(rig.cache.policy.settings, boot_offer=broken)
    with pytest.raises(RuntimeError, match="profile store unavailable"):
        rig.cache.answer(varied(IPXE_DISCOVER, 2), NOW)


def test_new_settings_empty_the_cache():
    rig = Rig()
    rig.check(SELECTING)
    settings = replace(rig.cache.policy.settings, lease_time=7200)
    rig.cache.policy.settings = rig.reference.settings = settings
    rig.cache.refresh()
    assert len(rig.cache) == 0
    assert decode(rig.check(varied(SELECTING, 1)).reply).lease_time == 7200


def test_only_fixed_address_answers_are_kept():
    rig = Rig(discovery=True)
    stranger = "52:54:00:00:00:99"
    offer = rig.cache.answer(request(MessageType.DHCPDISCOVER, stranger), NOW)
    assert offer.outcome == "offer" and offer.effects  # RecordDiscovered
    ack = rig.cache.answer(
        request(
            MessageType.DHCPREQUEST,
            stranger,
            options=[
                (OptionCode.SERVER_ID, encode_ipv4(SERVER)),
                (OptionCode.REQUESTED_IP, encode_ipv4("10.9.0.1")),
            ],
        ),
        NOW,
    )
    assert ack.outcome == "ack"
    nak = rig.cache.answer(
        request(MessageType.DHCPREQUEST, options=[(OptionCode.REQUESTED_IP, b"\x0a\x01\x00\x63")]),
        NOW,
    )
    assert nak.outcome == "nak"
    ignored = request(
        MessageType.DHCPREQUEST,
        options=[(OptionCode.SERVER_ID, encode_ipv4("10.0.0.9"))],
    )
    assert rig.cache.answer(ignored, NOW).outcome == "ignored"
    assert len(rig.cache) == 0


def test_an_ack_replay_frees_the_address_from_a_held_dynamic_offer():
    # A node whose fixed address lies in the dynamic range (an operator's choice): the policy
    # frees any offer held on it when the node is ACKed; a replayed ACK must too.
    book = Book()
    book.nodes[IPXE_MAC] = _node("hn1", IPXE_MAC, "10.9.0.1")
    rig = Rig(book, discovery=True)
    selecting = request(
        MessageType.DHCPREQUEST, options=[(OptionCode.REQUESTED_IP, encode_ipv4("10.9.0.1"))]
    )
    assert rig.cache.answer(selecting, NOW).outcome == "ack"
    stranger = "52:54:00:00:00:99"
    offer = rig.cache.answer(request(MessageType.DHCPDISCOVER, stranger), NOW)
    assert decode(offer.reply).yiaddr == IPv4Address("10.9.0.1")  # no lease recorded yet
    assert rig.cache.answer(varied(selecting, 8), NOW).outcome == "ack"
    assert rig.cache.hits == 1
    assert rig.cache.policy._offers.holder(IPv4Address("10.9.0.1"), NOW) is None


def test_malformed_requests_raise_and_are_not_kept():
    rig = Rig()
    with pytest.raises(DhcpCodecError):
        rig.cache.answer(UDHCPC_DISCOVER[:200], NOW)
    broken = bytearray(UDHCPC_DISCOVER)
    broken[236] = 0  # magic cookie
    with pytest.raises(DhcpCodecError):
        rig.cache.answer(bytes(broken), NOW)
    assert len(rig.cache) == 0


def test_bytearray_and_memoryview_are_accepted():
    rig = Rig()
    rig.check(UDHCPC_DISCOVER)
    assert rig.cache.answer(bytearray(UDHCPC_DISCOVER), NOW).outcome == "offer"
    assert rig.cache.answer(memoryview(UDHCPC_DISCOVER), NOW).outcome == "offer"
    assert rig.cache.hits == 2


def test_without_a_change_counter_every_request_goes_to_the_policy():
    rig = Rig(BookWithoutCounter())
    for xid in range(3):
        rig.check(varied(SELECTING, xid))
    assert rig.cache.hits == 0 and len(rig.cache) == 0


def test_the_cache_is_bounded_oldest_first():
    rig = Rig(max_entries=2)
    for data in (UDHCPC_DISCOVER, SELECTING, DHCLIENT_DISCOVER):
        rig.check(data)
    assert len(rig.cache) == 2
    rig.check(varied(UDHCPC_DISCOVER, 1))  # evicted: decided again
    rig.check(varied(DHCLIENT_DISCOVER, 1))
    assert rig.cache.hits == 1


def test_request_key_ignores_only_hops_xid_secs_and_unused_sname_file():
    base = request_key(UDHCPC_DISCOVER)
    assert request_key(varied(UDHCPC_DISCOVER, 1, 2, 3)) == base
    for offset in (0, 1, 2, 10, 11, 12, 24, 28, 33, 43, 240, 260, 299):
        changed = bytearray(UDHCPC_DISCOVER)
        changed[offset] ^= 1
        assert request_key(bytes(changed)) != base, offset
    # udhcpc's client id holds a 0x34 (52) byte: sname and file are kept, to be safe.
    assert len(base) == len(UDHCPC_DISCOVER) - 7
    plain = request_key(DHCLIENT_DISCOVER)  # no 52 anywhere in its options
    assert len(plain) == len(DHCLIENT_DISCOVER) - 7 - 192
    with_file = bytearray(DHCLIENT_DISCOVER)
    with_file[108] = ord("x")  # the file field: not read without option 52
    assert request_key(bytes(with_file)) == plain
    overloaded = bytearray(DHCLIENT_DISCOVER)
    overloaded[240:243] = bytes((52, 1, 1))  # now the file field may hold options
    other_file = bytearray(overloaded)
    other_file[108] = ord("x")
    assert request_key(bytes(overloaded)) != request_key(bytes(other_file))
    assert len(request_key(bytes(overloaded))) == len(DHCLIENT_DISCOVER) - 7


def test_mutated_requests_get_what_the_policy_gives_them():
    # Seeded mutations of real client packets, each sent twice (new xid): the cache must never
    # answer differently from the policy, keep an answer the policy would not give, or fail
    # differently on a malformed packet.
    rig = Rig()
    rng = random.Random(SEED ^ 0xCAC4E)
    layouts = [(packet, *layout(packet)) for packet in CORPUS]
    outcomes: dict[str, int] = {}
    for iteration in range(3000):
        packet, codes, lengths = layouts[iteration % len(layouts)]
        mutated = mutate(rng, packet, codes, lengths)
        for xid in (iteration, iteration + 1):
            data = varied(mutated, xid) if len(mutated) >= 10 else mutated
            try:
                decode(data)
            except DhcpCodecError:
                with pytest.raises(DhcpCodecError):
                    rig.cache.answer(data, NOW)
                outcomes["malformed"] = outcomes.get("malformed", 0) + 1
                continue
            answer = rig.check(data)
            outcomes[answer.outcome] = outcomes.get(answer.outcome, 0) + 1
    assert rig.cache.hits > 100
    assert {"malformed", "offer", "ack", "ignored"} <= outcomes.keys(), outcomes
