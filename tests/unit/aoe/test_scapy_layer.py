"""The scapy AoE layer against codec.py's bytes: frames built with scapy equal the codec's, and
scapy dissects the codec's (and the responder's) frames into the same field values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from cloudctl.aoe.ata import AtaCommand, identify_page
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    ETHERTYPE_AOE,
    FLAG_RESPONSE,
    AoeFrame,
    AtaArg,
    ConfigCommand,
    QueryConfigArg,
    encode_frame,
    format_mac,
)
from cloudctl.aoe.probe import identify_fields
from cloudctl.aoe.responder import Export, MemoryBlockStore, Responder
from cloudctl.aoe.scapy_layer import AoE, AoEAta, AoEQueryConfig, pad

TARGET = bytes.fromhex("020000000001")
HOST = bytes.fromhex("525400000001")


def ether(dst: bytes, src: bytes) -> Ether:
    return Ether(dst=format_mac(dst), src=format_mac(src), type=ETHERTYPE_AOE)


def test_query_config_request_matches_codec() -> None:
    built = ether(BROADCAST_MAC, HOST) / AoE(major=0xFFFF, minor=0xFF, tag=7) / AoEQueryConfig()
    codec = encode_frame(AoeFrame(BROADCAST_MAC, HOST, 0xFFFF, 0xFF, 7, QueryConfigArg()))
    assert pad(built) == codec


def test_config_answer_with_string_dissects() -> None:
    arg = QueryConfigArg(64, 0x4019, 17, 1, ConfigCommand.SET, b"rack-7 volume")
    wire = encode_frame(AoeFrame(HOST, TARGET, 3, 4, 0xDEADBEEF, arg, flags=FLAG_RESPONSE))
    frame = Ether(wire)
    header, config = frame[AoE], frame[AoEQueryConfig]
    assert (header.version, int(header.flags), header.major, header.minor) == (1, 8, 3, 4)
    assert header.tag == 0xDEADBEEF and "R" in header.flags
    assert (config.buffer_count, config.firmware, config.sector_count) == (64, 0x4019, 17)
    assert (config.aoe_version, config.ccmd) == (1, ConfigCommand.SET)
    assert config.config_length == 13 and config.config_string == b"rack-7 volume"
    assert bytes(frame) == wire  # padding kept as such


@given(
    aflags=st.integers(0, 255),
    feature=st.integers(0, 255),
    count=st.integers(0, 255),
    command=st.integers(0, 255),
    lba=st.integers(0, (1 << 48) - 1),
    data=st.binary(max_size=1024),
    tag=st.integers(0, 0xFFFFFFFF),
    major=st.integers(0, 0xFFFF),
    minor=st.integers(0, 0xFF),
)
def test_ata_frames_round_trip(aflags, feature, count, command, lba, data, tag, major, minor):
    arg = AtaArg(aflags, feature, count, command, lba, data)
    wire = encode_frame(AoeFrame(TARGET, HOST, major, minor, tag, arg))
    built = (
        ether(TARGET, HOST)
        / AoE(major=major, minor=minor, cmd=0, tag=tag)
        / AoEAta(
            aflags=aflags, err_feature=feature, sector_count=count, cmd_status=command, lba=lba
        )
        / data
    )
    assert pad(built) == wire
    ata = Ether(wire)[AoEAta]
    assert (int(ata.aflags), ata.err_feature, ata.sector_count) == (aflags, feature, count)
    assert (ata.cmd_status, ata.lba) == (command, lba)
    assert bytes(ata.payload).startswith(data)


def test_lba_is_little_endian_and_flags_are_named() -> None:
    ata = AoEAta(aflags="E+W", lba=0x0605_0403_0201, cmd_status=AtaCommand.WRITE_SECTORS_EXT)
    raw = bytes(ata)
    assert raw[0] == AFLAG_EXTENDED | AFLAG_WRITE
    assert raw[4:10] == bytes([1, 2, 3, 4, 5, 6])


def test_responder_read_answer_dissects_to_the_data() -> None:
    store = MemoryBlockStore(8 * 512)
    store.buffer[1024:2048] = bytes(range(256)) * 4
    responder = Responder({Export(0, 1, 8): store}, target_mac=TARGET, max_sectors_per_frame=2)
    request = (
        ether(TARGET, HOST)
        / AoE(major=0, minor=1, cmd=0, tag=9)
        / AoEAta(aflags="E", sector_count=2, cmd_status=AtaCommand.READ_SECTORS_EXT, lba=2)
    )
    (answer,) = responder.handle(pad(request))
    frame = Ether(bytes(answer))
    assert "R" in frame[AoE].flags and frame[AoE].tag == 9
    assert frame[AoEAta].cmd_status == 0x40
    assert bytes(frame[AoEAta].payload) == bytes(range(256)) * 4


def test_identify_page_fields_lba48_and_lba28() -> None:
    page = identify_page(3 << 30, serial="SN-42", model="Model X")
    assert identify_fields(page) == (3 << 30, "Model X", "SN-42")
    small = bytearray(identify_page(5000, serial="s"))
    small[83 * 2 + 1] &= ~0x04  # clear word 83 bit 10 (LBA48) in both words
    small[86 * 2 + 1] &= ~0x04
    small[100 * 2 : 100 * 2 + 8] = bytes(8)
    assert identify_fields(bytes(small))[0] == 5000  # from words 60-61
