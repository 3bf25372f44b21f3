"""ATA command semantics of an AoE export: which commands a target accepts and how they are
bounds checked (`plan_ata`), and the 512-byte IDENTIFY DEVICE page (`identify_page`).

Pure decisions over 512-byte sectors; the responder performs the I/O a plan asks for.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "ERROR_ABRT",
    "ERROR_IDNF",
    "ERROR_UNC",
    "FIRMWARE_REVISION",
    "MAX_LBA28_SECTORS",
    "MAX_LBA48_SECTORS",
    "MODEL",
    "SECTOR_SIZE",
    "STATUS_DRDY",
    "STATUS_ERR",
    "AtaCommand",
    "AtaOp",
    "AtaPlan",
    "check_ata_string",
    "identify_page",
    "plan_ata",
]

SECTOR_SIZE = 512
MAX_LBA28_SECTORS = 0x0FFFFFFF  # what words 60-61 report for anything larger
MAX_LBA48_SECTORS = 1 << 48
MODEL = "cloudctl AoE virtual disk"
FIRMWARE_REVISION = "1.0"

# Status register bits.
STATUS_BSY = 0x80
STATUS_DRDY = 0x40
STATUS_DF = 0x20
STATUS_DRQ = 0x08
STATUS_ERR = 0x01
# Error register bits.
ERROR_UNC = 0x40  # uncorrectable data: a read of the backing store failed
ERROR_IDNF = 0x10  # ID not found: the address is past the end of the device
ERROR_ABRT = 0x04  # aborted: unsupported command or bad parameter

_LBA28_MASK = 0x0FFFFFFF  # the high nibble of lba3 is the device/head register, not address


class AtaCommand(enum.IntEnum):
    READ_SECTORS = 0x20
    READ_SECTORS_EXT = 0x24
    WRITE_SECTORS = 0x30
    WRITE_SECTORS_EXT = 0x34
    CHECK_POWER_MODE = 0xE5
    FLUSH_CACHE = 0xE7
    FLUSH_CACHE_EXT = 0xEA
    IDENTIFY_DEVICE = 0xEC


class AtaOp(enum.IntEnum):
    """What the responder must do for a request."""

    FAIL = 0  # answer with the plan's status/error, touch nothing
    READ = 1
    WRITE = 2
    FLUSH = 3
    IDENTIFY = 4
    CHECK_POWER = 5


@dataclass(frozen=True, slots=True)
class AtaPlan:
    """The decision for one ATA request. `status`, `error` and `sector_count` are the register
    values the answer carries when the I/O (if any) succeeds."""

    op: AtaOp
    lba: int = 0
    count: int = 0
    status: int = STATUS_DRDY
    error: int = 0
    sector_count: int = 0


_FLUSH = AtaPlan(AtaOp.FLUSH)
_IDENTIFY = AtaPlan(AtaOp.IDENTIFY)
_CHECK_POWER = AtaPlan(AtaOp.CHECK_POWER, sector_count=0xFF)  # 0xFF: active or idle
_READS: dict[int, int] = {
    AtaCommand.READ_SECTORS: _LBA28_MASK,
    AtaCommand.READ_SECTORS_EXT: (1 << 48) - 1,
}
_WRITES: dict[int, int] = {
    AtaCommand.WRITE_SECTORS: _LBA28_MASK,
    AtaCommand.WRITE_SECTORS_EXT: (1 << 48) - 1,
}
_OTHERS: dict[int, AtaPlan] = {
    AtaCommand.FLUSH_CACHE: _FLUSH,
    AtaCommand.FLUSH_CACHE_EXT: _FLUSH,
    AtaCommand.IDENTIFY_DEVICE: _IDENTIFY,
    AtaCommand.CHECK_POWER_MODE: _CHECK_POWER,
}


def _fail(error: int, sector_count: int) -> AtaPlan:
    # Sector count stays as requested: nothing was transferred.
    return AtaPlan(AtaOp.FAIL, 0, 0, STATUS_DRDY | STATUS_ERR, error, sector_count)


def plan_ata(
    command: int,
    lba_field: int,
    sector_count: int,
    *,
    size_sectors: int,
    max_sectors: int,
    read_only: bool = False,
) -> AtaPlan:
    """Decide one ATA request. Never raises for any input: unsupported commands, requests
    beyond `max_sectors` and writes to a read-only export abort (ABRT); addresses past the end
    of the device fail with IDNF, as vblade does.

    The command code alone selects 28- or 48-bit addressing and the data direction (the AoE E
    and W flags only mirror it).
    A sector count of 0 transfers nothing (vblade too), rather than ATA's 256/65536: one
    AoE frame can never carry that many sectors.
    """
    mask = _READS.get(command)
    if mask is not None:
        op = AtaOp.READ
    else:
        mask = _WRITES.get(command)
        if mask is None:
            plan = _OTHERS.get(command)
            return plan if plan is not None else _fail(ERROR_ABRT, sector_count)
        if read_only:
            return _fail(ERROR_ABRT, sector_count)
        op = AtaOp.WRITE
    if sector_count > max_sectors:
        return _fail(ERROR_ABRT, sector_count)
    lba = lba_field & mask
    if lba + (sector_count or 1) > size_sectors:  # even a zero count needs an existing LBA
        return _fail(ERROR_IDNF, sector_count)
    return AtaPlan(op, lba, sector_count)


# --- IDENTIFY DEVICE --------------------------------------------------------------------------

# Words set by `identify_page`, named as in the ATA/ATAPI-7 IDENTIFY DEVICE data table.
_W_GENERAL = 0  # 0x0040: ATA device, fixed (not removable) media
_W_SERIAL = 10  # words 10-19: 20 ASCII characters
_W_FIRMWARE = 23  # words 23-26: 8 characters
_W_MODEL = 27  # words 27-46: 40 characters
_W_MULTIPLE = 47  # 0x8000: bits 15:8 fixed at 0x80, READ/WRITE MULTIPLE not supported
_W_CAPABILITIES = 49  # bit 9: LBA supported
_W_CAPABILITIES2 = 50  # bit 14 must be one
_W_LBA28 = 60  # words 60-61: user addressable sectors for 28-bit commands
_W_MAJOR_VERSION = 80  # bits 4-7: ATA/ATAPI-4 .. -7
_W_MINOR_VERSION = 81  # 0: not reported
_W_SUPPORTED1 = 82  # bit 5: volatile write cache
_W_SUPPORTED2 = 83  # bits 14 (valid), 13 FLUSH CACHE EXT, 12 FLUSH CACHE, 10 LBA48
_W_SUPPORTED3 = 84  # bit 14 (valid)
_W_ENABLED1 = 85  # bit 5: write cache enabled
_W_ENABLED2 = 86  # bits 13 FLUSH CACHE EXT, 12 FLUSH CACHE, 10 LBA48
_W_ENABLED3 = 87  # bit 14 (valid)
_W_LBA48 = 100  # words 100-103: user addressable sectors for 48-bit commands
_W_INTEGRITY = 255  # 0xA5 signature in the low byte, checksum in the high byte

_FIXED_WORDS = {
    _W_GENERAL: 0x0040,
    _W_MULTIPLE: 0x8000,
    _W_CAPABILITIES: 0x0200,
    _W_CAPABILITIES2: 0x4000,
    _W_MAJOR_VERSION: 0x00F0,
    _W_MINOR_VERSION: 0x0000,
    # The backing store has a volatile cache (flush() makes writes durable), so the page says
    # so: a guest that trusts it sends FLUSH CACHE (EXT) at barriers.
    _W_SUPPORTED1: 0x0020,
    _W_SUPPORTED2: 0x7400,
    _W_SUPPORTED3: 0x4000,
    _W_ENABLED1: 0x0020,
    _W_ENABLED2: 0x3400,
    _W_ENABLED3: 0x4000,
}


def check_ata_string(value: str, max_len: int, what: str) -> None:
    """ATA identify strings are printable ASCII, space padded to a fixed width."""
    if len(value) > max_len or not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{what} {value!r} must be at most {max_len} printable ASCII characters")


def _put_string(page: bytearray, word: int, width: int, value: str) -> None:
    # ATA strings hold the first character of each pair in the word's high byte; the page is
    # little-endian, so every byte pair is swapped relative to the text.
    text = value.ljust(width).encode("ascii")
    start = word * 2
    page[start : start + width : 2] = text[1::2]
    page[start + 1 : start + width : 2] = text[0::2]


def identify_page(
    size_sectors: int, *, serial: str, model: str = MODEL, firmware: str = FIRMWARE_REVISION
) -> bytes:
    """The IDENTIFY DEVICE answer for an LBA48 disk of `size_sectors` 512-byte sectors.

    The Linux aoe driver reads words 83|86 bit 10 (LBA48), then words 100-103 (else 60-61) for
    the size, and words 10-46 for serial, firmware and model.
    """
    if not 0 < size_sectors <= MAX_LBA48_SECTORS:
        raise ValueError(f"size {size_sectors} sectors is outside 1 .. 2**48")
    check_ata_string(serial, 20, "serial number")
    check_ata_string(firmware, 8, "firmware revision")
    check_ata_string(model, 40, "model")
    words = [0] * 256
    for index, value in _FIXED_WORDS.items():
        words[index] = value
    lba28 = min(size_sectors, MAX_LBA28_SECTORS)
    words[_W_LBA28], words[_W_LBA28 + 1] = lba28 & 0xFFFF, lba28 >> 16
    for i in range(4):
        words[_W_LBA48 + i] = (size_sectors >> (16 * i)) & 0xFFFF
    page = bytearray(struct.pack("<256H", *words))
    _put_string(page, _W_SERIAL, 20, serial)
    _put_string(page, _W_FIRMWARE, 8, firmware)
    _put_string(page, _W_MODEL, 40, model)
    page[2 * _W_INTEGRITY] = 0xA5
    page[2 * _W_INTEGRITY + 1] = -sum(page[: 2 * _W_INTEGRITY + 1]) & 0xFF
    return bytes(page)
