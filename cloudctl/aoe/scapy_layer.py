"""Scapy layers for AoE v1: the common header, Query Config and the ATA argument, bound to
Ethernet type 0x88A2, for probes, captures and interop tests. Scapy's own contrib/aoe is not
used: it sizes ATA data from the sector count, which misparses every read request and write answer.
"""

from __future__ import annotations

from typing import Any

from scapy.fields import (
    BitEnumField,
    BitField,
    ByteEnumField,
    ByteField,
    Field,
    FieldLenField,
    FlagsField,
    ShortField,
    StrLenField,
    XByteField,
    XIntField,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from cloudctl.aoe.codec import (
    ETHERTYPE_AOE,
    MIN_FRAME_LEN,
    Command,
    ConfigCommand,
    ErrorCode,
)

__all__ = ["AoE", "AoEAta", "AoEQueryConfig", "pad"]


class _LE48Field(Field[int, int]):
    """The ATA argument's LBA: 48 bits, least significant byte first (lba0..lba5)."""

    def __init__(self, name: str, default: int) -> None:
        super().__init__(name, default, "6s")

    def addfield(self, pkt: Packet, s: bytes, val: int | None) -> bytes:
        return s + int(val or 0).to_bytes(6, "little")

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, int]:
        return s[6:], int.from_bytes(s[:6], "little")

    def i2repr(self, pkt: Packet | None, x: Any) -> str:
        return f"{x:#x}" if isinstance(x, int) else repr(x)


class AoE(Packet):
    """The 10-byte AoE header. `flags`: R (response) and E (error) as in the spec."""

    name = "AoE"
    fields_desc = [
        BitField("version", 1, 4),
        # Listed from the least significant bit: two reserved bits, then E (0x4) and R (0x8).
        FlagsField("flags", 0, 4, ["Z0", "Z1", "E", "R"]),
        ByteEnumField("error", 0, {int(e): e.name.lower() for e in ErrorCode}),
        ShortField("major", 0xFFFF),
        ByteField("minor", 0xFF),
        ByteEnumField("cmd", Command.QUERY_CONFIG, {int(c): c.name.lower() for c in Command}),
        XIntField("tag", 0),
    ]


class AoEAta(Packet):
    """Issue ATA Command. Whatever follows the 12 bytes (sector data, Ethernet padding) is the
    payload (Raw): only the command and sector count say how much of it is data."""

    name = "AoE ATA"
    fields_desc = [
        # From bit 0: W(rite), A(sync), two reserved, D(evice), reserved, E(xtended, LBA48).
        FlagsField("aflags", 0, 8, ["W", "A", "Z2", "Z3", "D", "Z5", "E", "Z7"]),
        XByteField("err_feature", 0),
        ByteField("sector_count", 0),
        XByteField("cmd_status", 0),
        _LE48Field("lba", 0),
        ShortField("reserved", 0),
    ]


class AoEQueryConfig(Packet):
    """Query Config Information. `sector_count` is the most sectors one ATA frame may carry."""

    name = "AoE Query Config"
    fields_desc = [
        ShortField("buffer_count", 0),
        ShortField("firmware", 0),
        ByteField("sector_count", 0),
        BitField("aoe_version", 1, 4),
        BitEnumField("ccmd", 0, 4, {int(c): c.name.lower() for c in ConfigCommand}),
        FieldLenField("config_length", None, length_of="config_string", fmt="!H"),
        StrLenField("config_string", b"", length_from=lambda pkt: pkt.config_length),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s  # after the string comes only Ethernet padding


def pad(packet: Packet) -> bytes:
    """The packet's bytes zero-padded to the 60-byte Ethernet minimum, as a target sends them."""
    raw = bytes(packet)
    return raw + bytes(max(0, MIN_FRAME_LEN - len(raw)))


bind_layers(Ether, AoE, type=ETHERTYPE_AOE)
bind_layers(AoE, AoEAta, cmd=Command.ATA)
bind_layers(AoE, AoEQueryConfig, cmd=Command.QUERY_CONFIG)
