"""Generated-input tests for the zone: seeded mutation fuzzing of `answer` (never raises, every
reply parses and keeps the protocol's promises) and Hypothesis properties of names and case."""

from __future__ import annotations

import random
import struct
import time
from collections import Counter

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.dns.zone import answer

from .test_zone import SETTINGS, FakeZone


def _seed_queries() -> list[bytes]:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    asks = [
        ("hn1.cloud.test.", "A", {}),
        ("hN1.CLoud.tesT.", "A", {"use_edns": 0}),
        ("hn1.cloud.test.", "AAAA", {"use_edns": 0, "want_dnssec": True}),
        ("hn9.cloud.test.", "A", {}),
        ("ns.cloud.test.", "A", {"use_edns": 0, "options": [cookie]}),
        ("cloud.test.", "SOA", {}),
        ("cloud.test.", "NS", {"use_edns": 0}),
        ("cloud.test.", "ANY", {}),
        ("5.0.20.10.in-addr.arpa.", "PTR", {}),
        ("0.20.10.in-addr.arpa.", "PTR", {"use_edns": 0}),
        ("20.10.in-addr.arpa.", "SOA", {}),
        ("example.com.", "A", {"use_edns": 0}),
        ("hn1.cloud.test.", "A", {"use_edns": 1}),
    ]
    return [
        dns.message.make_query(name, rdtype, id=index, **kwargs).to_wire()
        for index, (name, rdtype, kwargs) in enumerate(asks)
    ]


SEEDS = _seed_queries()
_INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF)


def mutate(rng: random.Random, wire: bytes) -> bytes:
    """One to four random edits of a valid query, biased to the header and label bytes."""
    data = bytearray(wire)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(10)
        where = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(where, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1 and data:
            data[min(where, len(data) - 1)] = rng.choice(_INTERESTING)
        elif choice == 2:
            del data[where:]
        elif choice == 3:
            data[where:where] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4:
            del data[where : where + rng.randint(1, 8)]
        elif choice == 5 and len(data) >= 12:
            count = rng.choice((0, 1, 2, 3, 0xFFFF, rng.randrange(0x10000)))
            field = 4 + 2 * rng.randrange(4)
            data[field : field + 2] = struct.pack("!H", count)
        elif choice == 6 and len(data) >= 4:
            data[2] ^= rng.choice((0x80, 0x78, 0x08, 0x04, 0x02, 0x01))  # QR, opcode, AA, TC, RD
            data[3] ^= rng.choice((0x00, 0x0F, 0x70))  # rcode, Z bits
        elif choice == 7:
            data[where:where] = data[rng.randrange(len(data) + 1) :][: rng.randint(1, 32)]
        elif choice == 8:
            other = rng.choice(SEEDS)
            data[where:] = other[rng.randrange(len(other)) :]
        elif choice == 9 and len(data) > 2:
            index = rng.randrange(len(data) - 1)
            data[index : index + 2] = rng.choice(
                (b"\xc0\x0c", b"\xc0\x00", b"\xff\xff", b"\x00\x29")
            )
    return bytes(data)


def check_reply(wire: bytes, reply: bytes | None) -> str:
    """Assert what every reply must satisfy; return a label for the outcome."""
    if len(wire) < 12 or wire[2] & 0x80:
        assert reply is None
        return "dropped"
    assert reply is not None, wire.hex()
    response = dns.message.from_wire(reply)
    assert response.id == struct.unpack_from("!H", wire)[0]
    assert response.flags & dns.flags.QR and not response.flags & dns.flags.RA
    assert len(reply) <= 1232
    if response.flags & dns.flags.AA:
        assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    if response.question:
        assert len(response.question) == 1
    return dns.rcode.to_text(response.rcode())


def test_100k_mutated_queries_never_break_answer() -> None:
    rng = random.Random(20240601)
    zone = FakeZone({"hn1": "10.20.0.5", "hn2": "10.20.0.6"})
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    for _ in range(100_000):
        wire = mutate(rng, rng.choice(SEEDS))
        outcomes[check_reply(wire, answer(wire, zone, SETTINGS))] += 1
    elapsed = time.monotonic() - started
    # The mutations must reach every branch, not just bounce off the parser.
    for outcome in ("dropped", "FORMERR", "NOERROR", "NXDOMAIN", "REFUSED", "NOTIMP", "BADVERS"):
        assert outcomes[outcome] > 100, outcomes
    assert elapsed < 60, f"{elapsed:.1f}s for 100k queries"


def test_every_prefix_of_every_seed() -> None:
    zone = FakeZone()
    for seed in SEEDS:
        for length in range(len(seed) + 1):
            outcome = check_reply(seed[:length], answer(seed[:length], zone, SETTINGS))
            if length < 12:
                assert outcome == "dropped"
            elif length < len(seed):
                assert outcome == "FORMERR"


def test_tcp_replies_obey_the_same_rules() -> None:
    rng = random.Random(7)
    zone = FakeZone()
    for _ in range(2_000):
        wire = mutate(rng, rng.choice(SEEDS))
        reply = answer(wire, zone, SETTINGS, tcp=True)
        if reply is not None:
            dns.message.from_wire(reply)


# --- Hypothesis: names and case ---

labels = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)


def _randomise_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), label=labels, last=st.integers(0, 255))
def test_any_case_of_a_node_name_resolves_and_echoes(data: st.DataObject, label: str, last: int):
    if label == "ns":
        label = "nsx"
    zone = FakeZone({label: f"10.20.3.{last}"})
    asked = _randomise_case(data.draw, f"{label}.cloud.test.")
    wire = dns.message.make_query(asked, "A", use_edns=0).to_wire()
    reply = answer(wire, zone, SETTINGS)
    assert reply is not None
    response = dns.message.from_wire(reply)
    assert response.question[0].name.to_text() == asked
    assert [r.to_text() for r in response.answer[0]] == [f"10.20.3.{last}"]
    assert zone.calls == [("address_of", label)]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), octets=st.tuples(st.integers(0, 255), st.integers(0, 255)))
def test_any_case_of_a_reverse_name_resolves(data: st.DataObject, octets: tuple[int, int]):
    address = f"10.20.{octets[0]}.{octets[1]}"
    zone = FakeZone({"node": address})
    asked = _randomise_case(data.draw, f"{octets[1]}.{octets[0]}.20.10.in-addr.arpa.")
    response = dns.message.from_wire(
        answer(dns.message.make_query(asked, "PTR").to_wire(), zone, SETTINGS) or b""
    )
    assert response.question[0].name.to_text() == asked
    assert response.flags & dns.flags.AA
    assert [r.to_text() for r in response.answer[0]] == ["node.cloud.test."]


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=4))
def test_arbitrary_labels_under_the_zone_are_answered_authoritatively(names: list[bytes]):
    name = dns.name.Name((*names, b"cloud", b"test", b""))
    reply = answer(dns.message.make_query(name, "A").to_wire(), FakeZone(), SETTINGS)
    assert reply is not None
    response = dns.message.from_wire(reply)
    assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    assert response.flags & dns.flags.AA
    assert response.question[0].name.labels == name.labels  # byte-exact, case included
