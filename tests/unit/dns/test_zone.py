"""The zone's answers, rule by rule, through `answer` with an in-memory ZoneView."""

from __future__ import annotations

import ipaddress
import struct
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rrset
import dns.tsigkeyring
import pytest

from cloudctl.dns.zone import (
    DnsError,
    ZoneSettings,
    answer,
    answer_message,
    render,
    reverse_zone_name,
    udp_size_limit,
)

IP = ipaddress.IPv4Address
NET = ipaddress.IPv4Network

SETTINGS = ZoneSettings(
    domain="cloud.test", server_address=IP("10.20.0.2"), ttl=300, subnet=NET("10.20.0.0/16")
)


class FakeZone:
    """The inventory as the zone sees it; records every call so tests can see what was asked."""

    def __init__(self, nodes: dict[str, str] | None = None, serial: int = 2024060101) -> None:
        self.nodes = {label: IP(a) for label, a in (nodes or {"hn1": "10.20.0.5"}).items()}
        self.by_address = {a: label for label, a in self.nodes.items()}
        self._serial = serial
        self.calls: list[tuple[str, object]] = []

    def address_of(self, label: str) -> ipaddress.IPv4Address | None:
        self.calls.append(("address_of", label))
        return self.nodes.get(label)

    def name_of(self, address: ipaddress.IPv4Address) -> str | None:
        self.calls.append(("name_of", address))
        return self.by_address.get(address)

    def serial(self) -> int:
        self.calls.append(("serial", None))
        return self._serial


class BrokenZone(FakeZone):
    def address_of(self, label: str) -> ipaddress.IPv4Address | None:
        raise RuntimeError("inventory is gone")


def ask(
    name: str | dns.name.Name,
    rdtype: str | int = "A",
    *,
    zone: FakeZone | None = None,
    settings: ZoneSettings = SETTINGS,
    **query_args: object,
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **query_args)
    return send(query.to_wire(), zone=zone, settings=settings)


def send(
    wire: bytes, *, zone: FakeZone | None = None, settings: ZoneSettings = SETTINGS
) -> dns.message.Message:
    reply = answer(wire, zone or FakeZone(), settings)
    assert reply is not None
    return dns.message.from_wire(reply)


def rcode(response: dns.message.Message) -> dns.rcode.Rcode:
    return response.rcode()


def flag(response: dns.message.Message, bit: int) -> bool:
    return bool(response.flags & bit)


def rdatas(rrset: dns.rrset.RRset) -> list[str]:
    return sorted(rdata.to_text() for rdata in rrset)


# --- forward zone ---


def test_node_name_answers_its_address_authoritatively() -> None:
    response = ask("hn1.cloud.test.")
    assert rcode(response) == dns.rcode.NOERROR
    assert flag(response, dns.flags.QR) and flag(response, dns.flags.AA)
    assert not flag(response, dns.flags.RA) and not flag(response, dns.flags.TC)
    assert flag(response, dns.flags.RD)  # echoed from the query
    [rrset] = response.answer
    assert rrset.name == dns.name.from_text("hn1.cloud.test.")
    assert rrset.rdtype == dns.rdatatype.A and rrset.ttl == 300
    assert rdatas(rrset) == ["10.20.0.5"]
    assert response.authority == [] and response.additional == []


def test_query_id_and_rd_clear_are_echoed() -> None:
    query = dns.message.make_query("hn1.cloud.test.", "A", id=0xBEEF, flags=0)
    response = send(query.to_wire())
    assert response.id == 0xBEEF
    assert not flag(response, dns.flags.RD)


def test_cd_is_echoed_and_ad_is_not() -> None:
    flags = dns.flags.RD | dns.flags.CD | dns.flags.AD
    response = ask("hn1.cloud.test.", flags=flags)
    assert flag(response, dns.flags.CD) and not flag(response, dns.flags.AD)


def test_0x20_question_comes_back_byte_for_byte() -> None:
    query = dns.message.make_query("hN1.cLoUd.TeSt.", "A", id=7)
    wire = query.to_wire()
    reply = answer(wire, FakeZone(), SETTINGS)
    assert reply is not None
    question_end = len(wire)  # no EDNS: the question is the rest of the query
    assert reply[12:question_end] == wire[12:question_end]
    response = dns.message.from_wire(reply)
    assert response.question[0].name.to_text() == "hN1.cLoUd.TeSt."
    assert response.answer[0].name.to_text() == "hN1.cLoUd.TeSt."  # owner compresses onto it
    assert rdatas(response.answer[0]) == ["10.20.0.5"]


def test_inventory_is_asked_with_the_lower_case_label() -> None:
    zone = FakeZone()
    ask("HN1.CLOUD.TEST.", zone=zone)
    assert zone.calls == [("address_of", "hn1")]


def test_ns_name_is_the_server_address_even_if_a_node_is_called_ns() -> None:
    zone = FakeZone({"ns": "10.20.0.99"})
    response = ask("ns.cloud.test.", zone=zone)
    assert rcode(response) == dns.rcode.NOERROR and flag(response, dns.flags.AA)
    assert rdatas(response.answer[0]) == ["10.20.0.2"]
    assert ("address_of", "ns") not in zone.calls


def test_apex_soa_carries_the_inventory_serial_and_timers() -> None:
    response = ask("cloud.test.", "SOA", zone=FakeZone(serial=42))
    assert rcode(response) == dns.rcode.NOERROR and flag(response, dns.flags.AA)
    [rrset] = response.answer
    assert rrset.ttl == 300
    soa = rrset[0]
    assert soa.serial == 42
    assert soa.mname == dns.name.from_text("ns.cloud.test.")
    assert soa.rname == dns.name.from_text("hostmaster.cloud.test.")
    assert (soa.refresh, soa.retry, soa.expire, soa.minimum) == (3600, 600, 604800, 60)


def test_soa_serial_follows_the_inventory() -> None:
    zone = FakeZone(serial=1)
    assert ask("cloud.test.", "SOA", zone=zone).answer[0][0].serial == 1
    zone._serial = 2
    assert ask("cloud.test.", "SOA", zone=zone).answer[0][0].serial == 2


def test_soa_serial_is_taken_modulo_2_32() -> None:
    response = ask("cloud.test.", "SOA", zone=FakeZone(serial=2**32 + 5))
    assert response.answer[0][0].serial == 5


def test_apex_ns_names_the_server_and_adds_its_address() -> None:
    response = ask("cloud.test.", "NS")
    [rrset] = response.answer
    assert rdatas(rrset) == ["ns.cloud.test."] and rrset.ttl == 300
    [glue] = response.additional
    assert glue.name == dns.name.from_text("ns.cloud.test.") and rdatas(glue) == ["10.20.0.2"]


def test_any_at_the_apex_is_soa_and_ns() -> None:
    response = ask("cloud.test.", "ANY")
    assert rcode(response) == dns.rcode.NOERROR and flag(response, dns.flags.AA)
    assert sorted(r.rdtype for r in response.answer) == [dns.rdatatype.NS, dns.rdatatype.SOA]


def test_any_on_a_node_is_its_address() -> None:
    response = ask("hn1.cloud.test.", "ANY")
    assert [r.rdtype for r in response.answer] == [dns.rdatatype.A]


def assert_negative(response: dns.message.Message, expected: int, apex: str) -> None:
    assert rcode(response) == expected
    assert flag(response, dns.flags.AA) and not flag(response, dns.flags.RA)
    assert response.answer == []
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text(apex)
    assert soa.ttl == 60  # RFC 2308: min(SOA TTL, MINIMUM)
    assert soa[0].minimum == 60


def test_unknown_name_in_zone_is_nxdomain_with_soa() -> None:
    assert_negative(ask("hn9.cloud.test."), dns.rcode.NXDOMAIN, "cloud.test.")


def test_names_below_a_node_do_not_exist() -> None:
    assert_negative(ask("x.hn1.cloud.test."), dns.rcode.NXDOMAIN, "cloud.test.")
    assert_negative(ask("_ssh._tcp.ns.cloud.test.", "SRV"), dns.rcode.NXDOMAIN, "cloud.test.")


def test_other_type_on_a_node_is_nodata_with_soa() -> None:
    assert_negative(ask("hn1.cloud.test.", "AAAA"), dns.rcode.NOERROR, "cloud.test.")
    assert_negative(ask("ns.cloud.test.", "MX"), dns.rcode.NOERROR, "cloud.test.")


def test_a_at_the_apex_is_nodata() -> None:
    assert_negative(ask("cloud.test.", "A"), dns.rcode.NOERROR, "cloud.test.")


def test_negative_ttl_never_exceeds_the_ttl() -> None:
    settings = ZoneSettings("cloud.test", IP("10.20.0.2"), 30, NET("10.20.0.0/16"))
    response = ask("hn9.cloud.test.", settings=settings)
    assert response.authority[0].ttl == 30


def test_labels_that_are_not_host_names_never_reach_the_inventory() -> None:
    zone = FakeZone({"a": "10.20.0.7"})
    for label in (b"a.b", b"a b", b"\xff", b"a\x00"):
        name = dns.name.Name((label, b"cloud", b"test", b""))
        assert rcode(ask(name, zone=zone)) == dns.rcode.NXDOMAIN
    assert [call for call in zone.calls if call[0] == "address_of"] == []


def test_a_failing_inventory_is_servfail_not_an_exception() -> None:
    response = ask("hn1.cloud.test.", zone=BrokenZone())
    assert rcode(response) == dns.rcode.SERVFAIL
    assert not flag(response, dns.flags.AA)
    assert response.question[0].name == dns.name.from_text("hn1.cloud.test.")


def test_an_unusable_inventory_label_is_servfail() -> None:
    zone = FakeZone({"x" * 64: "10.20.0.9"})  # longer than a DNS label may be
    response = ask("9.0.20.10.in-addr.arpa.", "PTR", zone=zone)
    assert rcode(response) == dns.rcode.SERVFAIL


def test_a_node_lookup_asks_the_inventory_once_and_nothing_else() -> None:
    zone = FakeZone()
    ask("hn1.cloud.test.", zone=zone)
    ask("hn1.cloud.test.", zone=zone)
    assert zone.calls == [("address_of", "hn1"), ("address_of", "hn1")]


# --- reverse zone ---


@pytest.mark.parametrize(
    ("subnet", "zone_name"),
    [
        ("10.20.0.0/24", "0.20.10.in-addr.arpa."),
        ("10.20.0.0/16", "20.10.in-addr.arpa."),
        ("10.20.16.0/20", "20.10.in-addr.arpa."),
        ("10.20.5.64/26", "5.20.10.in-addr.arpa."),
        ("10.20.5.7/32", "5.20.10.in-addr.arpa."),
        ("172.16.0.0/12", "172.in-addr.arpa."),
        ("10.0.0.0/8", "10.in-addr.arpa."),
        ("192.168.2.0/23", "168.192.in-addr.arpa."),
    ],
)
def test_reverse_zone_is_the_enclosing_octet_boundary(subnet: str, zone_name: str) -> None:
    assert reverse_zone_name(NET(subnet)) == dns.name.from_text(zone_name)
    settings = ZoneSettings("cloud.test", IP("10.20.0.2"), 300, NET(subnet))
    assert settings.reverse_zone.to_text() == zone_name
    assert settings.forward_zone.to_text() == "cloud.test."


def test_ptr_names_the_node() -> None:
    zone = FakeZone()
    response = ask("5.0.20.10.in-addr.arpa.", "PTR", zone=zone)
    assert rcode(response) == dns.rcode.NOERROR and flag(response, dns.flags.AA)
    [rrset] = response.answer
    assert rdatas(rrset) == ["hn1.cloud.test."] and rrset.ttl == 300
    assert zone.calls == [("name_of", IP("10.20.0.5"))]


def test_ptr_is_case_insensitive_and_echoes_the_case() -> None:
    response = ask("5.0.20.10.In-Addr.ARPA.", "PTR")
    assert response.question[0].name.to_text() == "5.0.20.10.In-Addr.ARPA."
    assert rdatas(response.answer[0]) == ["hn1.cloud.test."]


def test_ptr_for_the_server_falls_back_to_ns_unless_the_inventory_names_it() -> None:
    assert rdatas(ask("2.0.20.10.in-addr.arpa.", "PTR").answer[0]) == ["ns.cloud.test."]
    named = FakeZone({"cfg": "10.20.0.2"})
    response = ask("2.0.20.10.in-addr.arpa.", "PTR", zone=named)
    assert rdatas(response.answer[0]) == ["cfg.cloud.test."]


def test_reverse_apex_has_soa_and_ns() -> None:
    response = ask("20.10.in-addr.arpa.", "ANY")
    assert rcode(response) == dns.rcode.NOERROR and flag(response, dns.flags.AA)
    by_type = {r.rdtype: r for r in response.answer}
    assert rdatas(by_type[dns.rdatatype.NS]) == ["ns.cloud.test."]
    assert by_type[dns.rdatatype.SOA][0].mname == dns.name.from_text("ns.cloud.test.")
    assert by_type[dns.rdatatype.SOA].name == dns.name.from_text("20.10.in-addr.arpa.")


def test_unknown_address_in_subnet_is_nxdomain() -> None:
    assert_negative(
        ask("77.1.20.10.in-addr.arpa.", "PTR"), dns.rcode.NXDOMAIN, "20.10.in-addr.arpa."
    )


def test_other_type_on_an_address_is_nodata() -> None:
    assert_negative(ask("5.0.20.10.in-addr.arpa.", "A"), dns.rcode.NOERROR, "20.10.in-addr.arpa.")


def test_interior_reverse_name_inside_the_subnet_is_nodata_not_nxdomain() -> None:
    # RFC 8020: NXDOMAIN here would erase 10.20.0.* from resolvers that cut on it.
    assert_negative(ask("0.20.10.in-addr.arpa.", "PTR"), dns.rcode.NOERROR, "20.10.in-addr.arpa.")


def test_slash_20_zone_covers_addresses_outside_the_subnet_as_nxdomain() -> None:
    settings = ZoneSettings("cloud.test", IP("10.20.16.2"), 300, NET("10.20.16.0/20"))
    zone = FakeZone({"hn1": "10.20.17.5", "stray": "10.20.99.1"})
    apex = "20.10.in-addr.arpa."
    response = ask("5.17.20.10.in-addr.arpa.", "PTR", zone=zone, settings=settings)
    assert rdatas(response.answer[0]) == ["hn1.cloud.test."]
    outside = ask("1.99.20.10.in-addr.arpa.", "PTR", zone=zone, settings=settings)
    assert_negative(outside, dns.rcode.NXDOMAIN, apex)
    assert ("name_of", IP("10.20.99.1")) not in zone.calls  # outside the subnet: not asked
    assert_negative(ask("99." + apex, "PTR", settings=settings), dns.rcode.NXDOMAIN, apex)
    assert_negative(ask("17." + apex, "PTR", settings=settings), dns.rcode.NOERROR, apex)


def test_slash_24_zone_answers_inside_and_refuses_its_parent() -> None:
    settings = ZoneSettings("cloud.test", IP("10.20.0.2"), 300, NET("10.20.0.0/24"))
    response = ask("5.0.20.10.in-addr.arpa.", "PTR", settings=settings)
    assert rdatas(response.answer[0]) == ["hn1.cloud.test."]
    assert rcode(ask("20.10.in-addr.arpa.", "SOA", settings=settings)) == dns.rcode.REFUSED
    assert rcode(ask("5.1.20.10.in-addr.arpa.", "PTR", settings=settings)) == dns.rcode.REFUSED


@pytest.mark.parametrize(
    "name",
    [
        "05.0.20.10.in-addr.arpa.",  # not the canonical spelling of 5
        "256.0.20.10.in-addr.arpa.",
        "x.0.20.10.in-addr.arpa.",
        "-1.0.20.10.in-addr.arpa.",
        "1.5.0.20.10.in-addr.arpa.",  # deeper than an address
    ],
)
def test_names_that_are_not_addresses_are_nxdomain(name: str) -> None:
    zone = FakeZone()
    assert_negative(ask(name, "PTR", zone=zone), dns.rcode.NXDOMAIN, "20.10.in-addr.arpa.")
    assert [c for c in zone.calls if c[0] == "name_of"] == []


# --- refusals and errors ---


@pytest.mark.parametrize("name", ["example.com.", "test.", ".", "cloud.test.example.", "arpa."])
def test_names_outside_both_zones_are_refused(name: str) -> None:
    response = ask(name)
    assert rcode(response) == dns.rcode.REFUSED
    assert not flag(response, dns.flags.AA) and not flag(response, dns.flags.RA)
    assert response.question[0].name == dns.name.from_text(name)
    assert response.answer == response.authority == []


def test_zone_transfers_are_refused() -> None:
    for rdtype in ("AXFR", "IXFR"):
        assert rcode(ask("cloud.test.", rdtype)) == dns.rcode.REFUSED


def test_other_classes_are_refused() -> None:
    assert rcode(ask("version.bind.", "TXT", rdclass="CH")) == dns.rcode.REFUSED
    assert rcode(ask("hn1.cloud.test.", "A", rdclass="CH")) == dns.rcode.REFUSED


@pytest.mark.parametrize(
    "opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 3, 15]
)
def test_other_opcodes_are_notimp(opcode: int) -> None:
    query = dns.message.make_query("hn1.cloud.test.", "A", id=99)
    query.set_opcode(opcode)
    response = send(query.to_wire())
    assert rcode(response) == dns.rcode.NOTIMP
    assert response.id == 99 and response.opcode() == opcode
    assert not flag(response, dns.flags.AA)


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!6H", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03hn1\x05cloud\x04test\x00\x00\x01\x00\x01"


def test_raw_query_is_answered() -> None:
    response = send(header() + QUESTION)
    assert rdatas(response.answer[0]) == ["10.20.0.5"]


@pytest.mark.parametrize("qd", [0, 2, 0xFFFF])
def test_question_count_other_than_one_is_formerr(qd: int) -> None:
    body = QUESTION * qd if qd <= 2 else QUESTION
    response = send(header(qd=qd) + body)
    assert rcode(response) == dns.rcode.FORMERR
    assert response.id == 0x1234 and response.question == []


@pytest.mark.parametrize(
    "body",
    [
        b"",  # the header promises a question
        QUESTION[:-1],  # truncated qclass
        QUESTION + b"junk",  # trailing bytes
        b"\x43abc\x00\x00\x01\x00\x01",  # label type 0x40 is reserved
        b"\xc0\x0c\x00\x01\x00\x01",  # a pointer to itself
        b"\x3fabc\x00\x00\x01\x00\x01",  # label longer than the message
    ],
)
def test_malformed_queries_with_a_header_are_formerr_echoing_the_id(body: bytes) -> None:
    response = send(header(qid=0xCAFE) + body)
    assert rcode(response) == dns.rcode.FORMERR
    assert response.id == 0xCAFE and flag(response, dns.flags.QR)
    assert flag(response, dns.flags.RD)


@pytest.mark.parametrize("length", range(12))
def test_shorter_than_a_header_is_dropped(length: int) -> None:
    assert answer((header() + QUESTION)[:length], FakeZone(), SETTINGS) is None


def test_responses_are_dropped() -> None:
    assert answer(header(flags=0x8100) + QUESTION, FakeZone(), SETTINGS) is None
    assert answer(header(flags=0x8000, qd=0), FakeZone(), SETTINGS) is None
    query = dns.message.make_query("hn1.cloud.test.", "A")
    query.flags |= dns.flags.QR
    assert answer_message(query, FakeZone(), SETTINGS) is None


def test_opt_as_the_question_type_is_formerr() -> None:
    assert rcode(ask("hn1.cloud.test.", "OPT")) == dns.rcode.FORMERR


def test_unknown_tsig_key_is_notauth() -> None:
    query = dns.message.make_query("hn1.cloud.test.", "A", id=5)
    keyring = dns.tsigkeyring.from_text({"k.": "aGVsbG8gd29ybGQ="})
    query.use_tsig(keyring, keyname="k.")
    response = send(query.to_wire())
    assert rcode(response) == dns.rcode.NOTAUTH and response.id == 5


# --- EDNS ---


def test_edns_query_gets_opt_with_our_payload() -> None:
    response = ask("hn1.cloud.test.", use_edns=0, payload=4096)
    assert response.edns == 0 and response.payload == 1232
    assert response.ednsflags & dns.flags.DO == 0
    assert rdatas(response.answer[0]) == ["10.20.0.5"]


def test_no_edns_no_opt() -> None:
    assert ask("hn1.cloud.test.").edns == -1


def test_do_bit_is_echoed() -> None:
    response = ask("hn1.cloud.test.", use_edns=0, want_dnssec=True)
    assert response.ednsflags & dns.flags.DO


def test_negative_and_error_answers_keep_the_opt() -> None:
    for name in ("hn9.cloud.test.", "example.com."):
        assert ask(name, use_edns=0).edns == 0
    query = dns.message.make_query("hn1.cloud.test.", "A", use_edns=0)
    query.set_opcode(dns.opcode.NOTIFY)
    assert send(query.to_wire()).edns == 0


def test_unknown_edns_version_is_badvers() -> None:
    response = ask("hn1.cloud.test.", use_edns=1)
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0 and response.answer == []
    assert response.question[0].name == dns.name.from_text("hn1.cloud.test.")


def test_two_opt_records_are_formerr() -> None:
    wire = dns.message.make_query("hn1.cloud.test.", "A", use_edns=0, id=77).to_wire()
    opt = wire[-11:]  # the bare OPT record make_query appended
    doubled = bytearray(wire + opt)
    doubled[10:12] = struct.pack("!H", 2)
    response = send(bytes(doubled))
    assert rcode(response) == dns.rcode.FORMERR and response.id == 77


def test_edns_options_are_ignored() -> None:
    import dns.edns

    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"12345678")
    response = ask("hn1.cloud.test.", use_edns=0, options=[cookie])
    assert rdatas(response.answer[0]) == ["10.20.0.5"] and response.options == ()


# --- sizes ---


@pytest.mark.parametrize(
    ("use_edns", "payload", "limit"),
    [(None, None, 512), (0, 4096, 1232), (0, 1232, 1232), (0, 800, 800), (0, 100, 512)],
)
def test_udp_size_limit(use_edns: int | None, payload: int | None, limit: int) -> None:
    query = dns.message.make_query("hn1.cloud.test.", "A", use_edns=use_edns, payload=payload)
    assert udp_size_limit(dns.message.from_wire(query.to_wire())) == limit


def big_response(use_edns: int | None) -> dns.message.Message:
    query = dns.message.make_query("hn1.cloud.test.", "A", use_edns=use_edns)
    response = dns.message.make_response(query)
    rdata = [
        dns.rdtypes.IN.A.A(dns.rdataclass.IN, dns.rdatatype.A, f"10.20.{i // 250}.{i % 250}")
        for i in range(200)
    ]
    response.answer.append(dns.rrset.from_rdata_list("hn1.cloud.test.", 300, rdata))
    return response


def test_render_truncates_with_tc_when_it_does_not_fit() -> None:
    wire = render(big_response(None), 512)
    assert len(wire) <= 512
    truncated = dns.message.from_wire(wire)
    assert flag(truncated, dns.flags.TC) and truncated.answer == []
    whole = dns.message.from_wire(render(big_response(None), 65535))
    assert not flag(whole, dns.flags.TC) and len(whole.answer[0]) == 200


def test_render_keeps_the_opt_when_truncating() -> None:
    wire = render(big_response(0), 1232)
    assert len(wire) <= 1232
    response = dns.message.from_wire(wire)
    assert flag(response, dns.flags.TC) and response.edns == 0


def test_answer_message_works_on_parsed_messages() -> None:
    query = dns.message.make_query("hn1.cloud.test.", "A")
    response = answer_message(query, FakeZone(), SETTINGS)
    assert response is not None and rdatas(response.answer[0]) == ["10.20.0.5"]


# --- settings ---


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"domain": "."}, "root"),
        ({"domain": "a..b"}, "not a DNS name"),
        ({"ttl": -1}, "dns.ttl"),
        ({"ttl": 2**31}, "dns.ttl"),
        ({"subnet": NET("0.0.0.0/4")}, "wider than /8"),
    ],
)
def test_bad_settings_say_what_is_wrong(changes: dict, message: str) -> None:
    values = {
        "domain": "cloud.test",
        "server_address": IP("10.20.0.2"),
        "ttl": 300,
        "subnet": NET("10.20.0.0/16"),
    }
    with pytest.raises(DnsError, match=message):
        ZoneSettings(**{**values, **changes})


def test_settings_from_config_and_trailing_dot() -> None:
    config = SimpleNamespace(
        network=SimpleNamespace(
            domain="Cloud.Test.", server=IP("10.20.0.2"), subnet=NET("10.20.0.0/24")
        ),
        dns=SimpleNamespace(ttl=120),
    )
    settings = ZoneSettings.from_config(config)  # type: ignore[arg-type]
    assert settings.ttl == 120 and settings.reverse_zone.to_text() == "0.20.10.in-addr.arpa."
    response = ask("hn1.cloud.test.", settings=settings)
    assert rdatas(response.answer[0]) == ["10.20.0.5"] and response.answer[0].ttl == 120
