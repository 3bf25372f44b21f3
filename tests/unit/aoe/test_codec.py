"""AoE v1 frame codec: byte layouts at the AoEr11 field offsets, round trips, malformed frames."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    FLAG_ERROR,
    FLAG_RESPONSE,
    AoeCodecError,
    AoeFrame,
    AtaArg,
    Command,
    ConfigCommand,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    MaskDirectiveCommand,
    MaskError,
    QueryConfigArg,
    RawArg,
    ReserveCommand,
    ReserveReleaseArg,
    addressed_to,
    decode_frame,
    encode_frame,
    format_mac,
    max_sectors_for_mtu,
    parse_mac,
)

HOST = bytes.fromhex("525400aabbcc")
TARGET = bytes.fromhex("020000000001")


def frame(arg, **kw) -> AoeFrame:
    fields = {"dst": TARGET, "src": HOST, "major": 0x1234, "minor": 0x56, "tag": 0xDEADBEEF}
    fields.update(kw)
    return AoeFrame(arg=arg, **fields)


def header(command: int, verflags: int = 0x10, error: int = 0) -> bytes:
    """The 24-byte Ethernet + AoE header written field by field from the spec's figure."""
    return (
        TARGET
        + HOST
        + b"\x88\xa2"
        + bytes([verflags, error])
        + b"\x12\x34"
        + b"\x56"
        + bytes([command])
        + b"\xde\xad\xbe\xef"
    )


# --- byte-exact layouts -----------------------------------------------------------------------


def test_common_header_offsets() -> None:
    wire = encode_frame(frame(AtaArg(), flags=FLAG_RESPONSE | FLAG_ERROR, error=2))
    assert wire[0:6] == TARGET
    assert wire[6:12] == HOST
    assert wire[12:14] == b"\x88\xa2"
    assert wire[14] == 0x1C  # version 1 in the high nibble, R and E flags in the low one
    assert wire[15] == 2
    assert wire[16:18] == b"\x12\x34"  # major is big-endian
    assert wire[18] == 0x56
    assert wire[19] == Command.ATA
    assert wire[20:24] == b"\xde\xad\xbe\xef"


def test_ata_argument_offsets() -> None:
    arg = AtaArg(AFLAG_EXTENDED | AFLAG_WRITE, 0x11, 2, 0x34, 0x0605040302 << 8 | 0x01, b"D" * 1024)
    wire = encode_frame(frame(arg))
    assert wire[24] == 0x41
    assert wire[25] == 0x11  # err/feature
    assert wire[26] == 2  # sector count
    assert wire[27] == 0x34  # cmd/status
    assert wire[28:34] == bytes([1, 2, 3, 4, 5, 6])  # lba0 (least significant) first
    assert wire[34:36] == b"\0\0"  # reserved
    assert wire[36:] == b"D" * 1024
    assert len(wire) == 36 + 1024


def test_query_config_offsets() -> None:
    arg = QueryConfigArg(0x0102, 0x0304, 17, 1, ConfigCommand.TEST_PREFIX, b"hello")
    wire = encode_frame(frame(arg))
    assert wire[19] == Command.QUERY_CONFIG
    assert wire[24:26] == b"\x01\x02"  # buffer count
    assert wire[26:28] == b"\x03\x04"  # firmware version
    assert wire[28] == 17  # sector count
    assert wire[29] == 0x12  # AoE version 1 | CCmd 2
    assert wire[30:32] == b"\x00\x05"  # config string length
    assert wire[32:37] == b"hello"
    assert wire[37:] == bytes(60 - 37)


def test_mac_mask_offsets() -> None:
    directives = (
        MaskDirective(MaskDirectiveCommand.ADD, HOST),
        MaskDirective(MaskDirectiveCommand.DELETE, TARGET),
    )
    wire = encode_frame(frame(MacMaskArg(MaskCommand.EDIT, 0, directives)))
    assert wire[19] == Command.MAC_MASK_LIST
    assert wire[24:28] == bytes([0, 1, 0, 2])  # reserved, MCmd, MError, Dir Count
    assert wire[28:36] == bytes([0, 1]) + HOST  # reserved, DCmd, MAC
    assert wire[36:44] == bytes([0, 2]) + TARGET
    assert len(wire) == 60


def test_reserve_release_offsets() -> None:
    wire = encode_frame(frame(ReserveReleaseArg(ReserveCommand.FORCE_SET, (HOST, TARGET))))
    assert wire[19] == Command.RESERVE_RELEASE
    assert wire[24:26] == bytes([2, 2])  # RCmd, NMacs
    assert wire[26:38] == HOST + TARGET


def test_short_frames_are_padded_to_60_bytes() -> None:
    assert len(encode_frame(frame(ReserveReleaseArg()))) == 60
    assert encode_frame(frame(QueryConfigArg()))[32:] == bytes(28)


# --- decoding hand-built frames ---------------------------------------------------------------


def test_decode_ata_request() -> None:
    lba = struct.pack("<Q", 0x0000_1234_5678_9ABC)[:6]
    wire = header(0) + bytes([0x40, 0, 17, 0x24]) + lba + b"\0\0"
    decoded = decode_frame(wire)
    assert (decoded.dst, decoded.src, decoded.major, decoded.minor) == (TARGET, HOST, 0x1234, 0x56)
    assert (decoded.tag, decoded.version, decoded.flags, decoded.command) == (0xDEADBEEF, 1, 0, 0)
    assert decoded.arg == AtaArg(0x40, 0, 17, 0x24, 0x1234_5678_9ABC, b"")
    assert decoded.arg.extended and not decoded.arg.write


def test_decode_keeps_ethernet_padding_in_ata_data() -> None:
    wire = header(0) + bytes(12) + bytes(24)
    assert decode_frame(wire).arg.data == bytes(24)


def test_decode_query_config_ignores_padding() -> None:
    wire = header(1) + b"\x00\x10\x40\x16\x02\x13\x00\x03abc" + bytes(25)
    assert decode_frame(wire).arg == QueryConfigArg(16, 0x4016, 2, 1, 3, b"abc")


def test_decode_mask_list() -> None:
    wire = header(2) + bytes([0, 1, 0, 2]) + bytes([0, 1]) + HOST + bytes([0, 0]) + TARGET
    arg = decode_frame(wire).arg
    assert arg == MacMaskArg(1, 0, (MaskDirective(1, HOST), MaskDirective(0, TARGET)), dir_count=2)


def test_decode_mask_error_answer_carries_an_index_not_a_list() -> None:
    wire = header(2, verflags=0x18) + bytes([0, 1, MaskError.BAD_DIRECTIVE, 3]) + bytes(32)
    arg = decode_frame(wire).arg
    assert arg == MacMaskArg(1, MaskError.BAD_DIRECTIVE, (), 3)
    assert encode_frame(decode_frame(wire)) == wire


def test_decode_reserve_release() -> None:
    wire = header(3) + bytes([1, 2]) + HOST + TARGET + bytes(10)
    assert decode_frame(wire).arg == ReserveReleaseArg(1, (HOST, TARGET))


def test_unknown_command_and_other_versions_stay_raw() -> None:
    vendor = header(0xF0) + b"vendor"
    assert decode_frame(vendor).arg == RawArg(0xF0, b"vendor")
    v2 = header(0, verflags=0x20) + b"xyz"
    decoded = decode_frame(v2)
    assert (decoded.version, decoded.arg) == (2, RawArg(0, b"xyz"))
    assert encode_frame(decoded)[: len(v2)] == v2


def test_accepts_bytearray_and_memoryview() -> None:
    wire = encode_frame(frame(ReserveReleaseArg(0, (HOST,))))
    assert decode_frame(bytearray(wire)) == decode_frame(memoryview(wire)) == decode_frame(wire)


# --- malformed frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        header(0)[:23],
        header(0)[:12] + b"\x08\x00" + header(0)[14:] + bytes(36),  # IPv4 ethertype
        header(0) + bytes(11),  # ATA argument needs 12 bytes
        header(1) + bytes(7),
        header(1) + b"\0\0\0\0\0\0\x04\x01" + bytes(1024),  # length 1025 > 1024
        header(1) + b"\0\0\0\0\0\0\x00\x05abcd",  # length past the end
        header(2) + bytes(3),
        header(2) + bytes([0, 1, 0, 2]) + bytes(15),  # two directives need 16 bytes
        header(3) + bytes(1),
        header(3) + bytes([1, 3]) + bytes(17),  # three MACs need 18 bytes
    ],
)
def test_malformed_frames_raise_codec_error(wire: bytes) -> None:
    with pytest.raises(AoeCodecError):
        decode_frame(wire)


@pytest.mark.parametrize(
    "bad",
    [
        frame(AtaArg(), dst=b"short"),
        frame(AtaArg(), src="52:54:00:00:00:01"),
        frame(AtaArg(), tag=1 << 32),
        frame(AtaArg(), major=0x10000),
        frame(AtaArg(), flags=16),
        frame(AtaArg(), version=16),
        frame(AtaArg(lba=1 << 48)),
        frame(AtaArg(sector_count=256)),
        frame(QueryConfigArg(ccmd=16)),
        frame(QueryConfigArg(config_string=bytes(1025))),
        frame(QueryConfigArg(buffer_count=-1)),
        frame(MacMaskArg(directives=(MaskDirective(1, b"12345"),))),
        frame(MacMaskArg(directives=(MaskDirective(1, HOST),), dir_count=2)),
        frame(ReserveReleaseArg(macs=(b"1234567",))),
        frame(ReserveReleaseArg(macs=(HOST,) * 256)),
        frame("not an argument"),  # type: ignore[arg-type]
    ],
)
def test_unencodable_frames_raise_codec_error(bad: AoeFrame) -> None:
    with pytest.raises(AoeCodecError):
        encode_frame(bad)


# --- addressing and helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("major", "minor", "expected"),
    [
        (3, 4, True),
        (3, 5, False),
        (2, 4, False),
        (0xFFFF, 4, True),
        (3, 0xFF, True),
        (0xFFFF, 0xFF, True),
        (0xFFFF, 5, False),
        (2, 0xFF, False),
    ],
)
def test_addressed_to(major: int, minor: int, expected: bool) -> None:
    assert addressed_to(major, minor, 3, 4) is expected


def test_broadcast_and_flag_properties() -> None:
    assert frame(AtaArg(), major=0xFFFF).is_broadcast
    assert frame(AtaArg(), minor=0xFF).is_broadcast
    assert not frame(AtaArg()).is_broadcast
    answer = frame(AtaArg(), flags=FLAG_RESPONSE | FLAG_ERROR)
    assert answer.is_response and answer.is_error


@pytest.mark.parametrize(("mtu", "sectors"), [(1500, 2), (9000, 17), (548, 1), (1 << 20, 255)])
def test_max_sectors_for_mtu(mtu: int, sectors: int) -> None:
    assert max_sectors_for_mtu(mtu) == sectors


def test_max_sectors_for_tiny_mtu_is_an_error() -> None:
    with pytest.raises(AoeCodecError):
        max_sectors_for_mtu(547)


def test_mac_helpers() -> None:
    assert parse_mac("52:54:00:AA:bb:cc") == HOST
    assert parse_mac("52-54-00-aa-bb-cc") == HOST
    assert parse_mac(HOST) == HOST
    assert format_mac(HOST) == "52:54:00:aa:bb:cc"
    assert format_mac(BROADCAST_MAC) == "ff:ff:ff:ff:ff:ff"
    for bad in ("52:54:00:aa:bb", "52:54:00:aa:bb:zz", "525400aabbcc", b"\x01\x02"):
        with pytest.raises(AoeCodecError):
            parse_mac(bad)


# --- round trip property ----------------------------------------------------------------------

macs = st.binary(min_size=6, max_size=6)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)

ata_args = st.builds(
    AtaArg, u8, u8, u8, u8, st.integers(0, (1 << 48) - 1), st.binary(max_size=2048)
)
config_args = st.builds(
    QueryConfigArg, u16, u16, u8, st.integers(0, 15), st.integers(0, 15), st.binary(max_size=1024)
)
directives = st.builds(MaskDirective, u8, macs)
mask_lists = st.builds(MacMaskArg, u8, st.just(0), st.lists(directives, max_size=255).map(tuple))
mask_errors = st.builds(MacMaskArg, u8, st.integers(1, 255), st.just(()), u8)
reserve_args = st.builds(ReserveReleaseArg, u8, st.lists(macs, max_size=255).map(tuple))
raw_args = st.builds(RawArg, st.integers(4, 255), st.binary(max_size=64))


@st.composite
def frames(draw: st.DrawFn) -> AoeFrame:
    arg = draw(st.one_of(ata_args, config_args, mask_lists, mask_errors, reserve_args, raw_args))
    flags = draw(st.integers(0, 15))
    if isinstance(arg, MacMaskArg) and arg.merror:
        flags |= FLAG_RESPONSE  # only answers carry a failing directive's index
    return AoeFrame(draw(macs), draw(macs), draw(u16), draw(u8), draw(st.integers(0, 2**32 - 1)),
                    arg, flags, draw(u8))  # fmt: skip


@given(frames())
def test_round_trip(original: AoeFrame) -> None:
    wire = encode_frame(original)
    assert len(wire) >= 60
    expected = original
    # ATA data and raw arguments run to the end of the frame, so they pick up Ethernet padding.
    if isinstance(original.arg, AtaArg):
        pad = bytes(max(0, 60 - 36 - len(original.arg.data)))
        expected = replace(original, arg=replace(original.arg, data=original.arg.data + pad))
    elif isinstance(original.arg, RawArg):
        pad = bytes(max(0, 60 - 24 - len(original.arg.payload)))
        expected = replace(original, arg=replace(original.arg, payload=original.arg.payload + pad))
    assert decode_frame(wire) == expected
    assert encode_frame(decode_frame(wire)) == wire
