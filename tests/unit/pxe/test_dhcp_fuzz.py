"""Generated-input tests for the DHCP codec: Hypothesis round-trips of generated messages, and
seeded mutation fuzzing of decode (only DhcpCodecError may escape; what decodes must re-encode)."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.pxe.dhcp.bootmethods import BootChoice, BootOffer, NoBootMethod, choose_boot
from cloudctl.pxe.dhcp.codec import (
    BootOp,
    DhcpCodecError,
    DhcpMessage,
    DhcpOptions,
    MessageType,
    decode,
    encode,
    encoded_size,
    reply_size_limit,
    reply_to,
)
from cloudctl.pxe.dhcp.options import (
    IPXE_NO_PXEDHCP,
    decode_client_architectures,
    decode_encapsulated,
    decode_user_classes,
    encode_client_architectures,
    encode_encapsulated,
    encode_ipv4,
    encode_text,
    encode_u32,
    encode_user_classes,
    option_wire_size,
)

from .test_dhcp_codec import (
    DHCLIENT_DISCOVER,
    IPXE_DISCOVER,
    OVERLOADED_ACK,
    RELAYED_REQUEST,
    UDHCPC_DISCOVER,
    request_with,
)

# --- Hypothesis: generated messages round-trip ---


def _no_nul(max_size: int) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda raw: raw.replace(b"\x00", b"."))


option_pairs = st.lists(
    st.tuples(st.integers(1, 254).filter(lambda code: code != 52), st.binary(max_size=600)),
    max_size=10,
    unique_by=lambda pair: pair[0],
)
addresses = st.ip_addresses(v=4)
messages = st.builds(
    DhcpMessage,
    op=st.sampled_from(BootOp),
    htype=st.integers(0, 255),
    hlen=st.integers(0, 16),
    hops=st.integers(0, 255),
    xid=st.integers(0, 2**32 - 1),
    secs=st.integers(0, 2**16 - 1),
    flags=st.integers(0, 2**16 - 1),
    ciaddr=addresses,
    yiaddr=addresses,
    siaddr=addresses,
    giaddr=addresses,
    chaddr=st.binary(min_size=16, max_size=16),
    sname=_no_nul(64),
    file=_no_nul(128),
    options=option_pairs.map(DhcpOptions),
)
ROUND_TRIP = settings(max_examples=300, deadline=None)


@ROUND_TRIP
@given(messages)
def test_round_trip(msg: DhcpMessage) -> None:
    wire = encode(msg)
    assert len(wire) == encoded_size(msg) >= 300
    decoded = decode(wire)
    assert decoded == msg
    expected_order = sorted(msg.options, key=lambda code: {53: 0, 82: 2}.get(code, 1))
    assert list(decoded.options) == expected_order
    assert encode(decoded) == wire


@ROUND_TRIP
@given(st.lists(st.binary(min_size=1, max_size=255), max_size=8))
def test_user_class_round_trip(classes: list[bytes]) -> None:
    assert decode_user_classes(encode_user_classes(classes)) == tuple(classes)


@ROUND_TRIP
@given(st.binary(max_size=300))
def test_user_class_decoding_is_total(raw: bytes) -> None:
    classes = decode_user_classes(raw)  # never raises
    assert classes == (raw,) or encode_user_classes(classes) == raw


@ROUND_TRIP
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8))
def test_client_architecture_round_trip(arch_codes: list[int]) -> None:
    raw = encode_client_architectures(arch_codes)
    assert decode_client_architectures(raw) == tuple(arch_codes)


@ROUND_TRIP
@given(option_pairs)
def test_encapsulated_round_trip(pairs: list[tuple[int, bytes]]) -> None:
    assert decode_encapsulated(encode_encapsulated(pairs), 175) == DhcpOptions(pairs)


@ROUND_TRIP
@given(
    max_size=st.one_of(st.none(), st.integers(0, 2000)),
    requested=st.lists(st.integers(1, 254), max_size=10),
    pairs=option_pairs.filter(lambda pairs: not {53, 82} & {code for code, _ in pairs}),
)
def test_reply_fits_or_is_refused(
    max_size: int | None, requested: list[int], pairs: list[tuple[int, bytes]]
) -> None:
    request = request_with(max_size, requested)
    try:
        reply = reply_to(request, MessageType.DHCPOFFER, options=pairs)
    except DhcpCodecError:
        kept = [value for code, value in pairs if code in requested or code in (51, 54)]
        assert 240 + 3 + sum(map(option_wire_size, kept)) + 1 > reply_size_limit(request)
        return
    assert len(encode(reply)) <= reply_size_limit(request)
    for code, value in pairs:
        if code in requested or code in (51, 54):
            assert reply.options[code] == value


# --- seeded mutation fuzzing of decode ---

SEED = 0xD4C9_2131
MUTATED_PACKETS = 100_000
OPTIONS_START = 240
SNAME, FILE = (44, 108), (108, 236)
# Codes whose bytes change how the rest is parsed or read.
INTERESTING_CODES = (0, 255, 52, 53, 50, 54, 55, 57, 60, 61, 77, 82, 93, 94, 97, 175, 12, 67)
ACCESSORS = tuple(
    name
    for name, attribute in vars(DhcpMessage).items()
    if isinstance(attribute, property) and name not in ("mac", "broadcast")
)
OFFER = BootOffer(ipxe_script_url="http://10.0.0.1/boot/ipxe/{mac}")


def _server_offer() -> bytes:
    """An OFFER as cloudctl sends it: long split option, iPXE 175, relay info echoed."""
    request = decode(RELAYED_REQUEST)
    return encode(
        reply_to(
            request,
            MessageType.DHCPOFFER,
            yiaddr="10.1.0.50",
            options=[
                (54, encode_ipv4("10.0.0.1")),
                (51, encode_u32(3600)),
                (67, encode_text("http://10.0.0.1/boot/ipxe/" + "n" * 300)),
                (175, IPXE_NO_PXEDHCP),
                (77, encode_user_classes([b"iPXE", b"x"])),
            ],
        )
    )


CORPUS = (
    UDHCPC_DISCOVER,
    DHCLIENT_DISCOVER,
    IPXE_DISCOVER,
    RELAYED_REQUEST,
    OVERLOADED_ACK,
    _server_offer(),
)


def option_layout(area: bytes, base: int) -> tuple[list[int], list[int]]:
    """Offsets of option code bytes and length bytes in a well-formed TLV area."""
    codes: list[int] = []
    lengths: list[int] = []
    index = 0
    while index < len(area) and area[index] != 255:
        if area[index] == 0:
            index += 1
            continue
        codes.append(base + index)
        lengths.append(base + index + 1)
        index += 2 + area[index + 1]
    return codes, lengths


def tlv_regions(packet: bytes) -> list[tuple[int, int]]:
    regions = [(OPTIONS_START, len(packet))]
    if packet == OVERLOADED_ACK:
        regions += [SNAME, FILE]
    return regions


def layout(packet: bytes) -> tuple[list[int], list[int]]:
    codes: list[int] = []
    lengths: list[int] = []
    for start, end in tlv_regions(packet):
        region_codes, region_lengths = option_layout(packet[start:end], start)
        codes += region_codes
        lengths += region_lengths
    return codes, lengths


def mutate(rng: random.Random, packet: bytes, codes: list[int], lengths: list[int]) -> bytes:
    data = bytearray(packet)
    regions = tlv_regions(packet)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        size = len(data)
        if size and rng.random() < 0.75:  # mostly hit the option areas, where parsing is
            start, end = rng.choice(regions)
            low, high = min(start, size - 1), min(end, size)
            position = rng.randrange(low, high) if high > low else size - 1
        else:
            position = rng.randrange(size) if size else 0
        kind = rng.randrange(8)
        if kind == 0 and size:  # bit flip
            data[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and size:  # byte replacement
            data[position] = rng.randrange(256)
        elif kind == 2:  # truncation
            del data[rng.randrange(size + 1) :]
        elif kind == 3:  # insertion
            data[position:position] = rng.randbytes(rng.randint(1, 6))
        elif kind == 4:  # deletion of a run
            del data[position : position + rng.randint(1, 6)]
        elif kind == 5:  # length-field corruption
            offsets = [offset for offset in lengths if offset < size]
            if offsets:
                offset = rng.choice(offsets)
                data[offset] = rng.choice(
                    (0, 1, 2, 3, 4, 5, 254, 255, rng.randrange(256), (data[offset] + 1) % 256)
                )
        elif kind == 6:  # option-code corruption
            offsets = [offset for offset in codes if offset < size]
            if offsets:
                data[rng.choice(offsets)] = rng.choice(INTERESTING_CODES)
        else:  # header-field corruption: op, hlen, cookie
            offset = rng.choice((0, 2, 236, 237, 238, 239))
            if offset < size:
                data[offset] = rng.choice((0, 1, 2, 3, 16, 17, 99, 255))
    return bytes(data)


def exercise(message: DhcpMessage) -> None:
    """Everything a server does with a decoded request must only fail with DhcpCodecError."""
    wire = encode(message)
    assert decode(wire) == message
    for name in ACCESSORS:
        with contextlib.suppress(DhcpCodecError):
            getattr(message, name)
    assert isinstance(choose_boot(message, OFFER), BootChoice | NoBootMethod)
    # May be refused, e.g. when an echoed option 82 exceeds the client's size limit.
    with contextlib.suppress(DhcpCodecError):
        encode(reply_to(message, MessageType.DHCPOFFER, options=[(54, encode_ipv4("10.0.0.1"))]))


def test_mutated_packets_only_raise_dhcp_codec_error() -> None:
    rng = random.Random(SEED)
    layouts = [layout(packet) for packet in CORPUS]
    outcomes: Counter[str] = Counter()
    for iteration in range(MUTATED_PACKETS):
        index = iteration % len(CORPUS)
        mutated = mutate(rng, CORPUS[index], *layouts[index])
        try:
            message = decode(mutated)
        except DhcpCodecError as err:
            outcomes[str(err).split(" ", 2)[1]] += 1
            continue
        except Exception as err:
            raise AssertionError(
                f"iteration {iteration} (seed {SEED:#x}): {type(err).__name__}: {err} "
                f"decoding {mutated.hex()}"
            ) from err
        try:
            exercise(message)
        except DhcpCodecError as err:
            raise AssertionError(
                f"iteration {iteration}: decoded but not usable ({err}): {mutated.hex()}"
            ) from err
        except Exception as err:
            raise AssertionError(
                f"iteration {iteration} (seed {SEED:#x}): {type(err).__name__}: {err} "
                f"after decoding {mutated.hex()}"
            ) from err
        outcomes["decoded"] += 1
    # The mutations must reach both outcomes and the main error paths, else the fuzz is blind.
    assert sum(outcomes.values()) == MUTATED_PACKETS
    assert outcomes["decoded"] > MUTATED_PACKETS // 10
    rejected = MUTATED_PACKETS - outcomes["decoded"]
    assert rejected > MUTATED_PACKETS // 10
    # first words after "truncated"/"bad": option, message, magic, op, hlen, length:, ...
    for kind in ("option", "message:", "magic", "op", "hlen", "length:"):
        assert outcomes[kind] > 0, outcomes


def test_corpus_is_valid() -> None:
    for packet in CORPUS:
        exercise(decode(packet))
