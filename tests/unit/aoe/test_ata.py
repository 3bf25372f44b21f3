"""ATA semantics: IDENTIFY DEVICE page words, command planning and bounds checks."""

from __future__ import annotations

import struct

import pytest

from cloudctl.aoe.ata import (
    ERROR_ABRT,
    ERROR_IDNF,
    MAX_LBA28_SECTORS,
    MODEL,
    STATUS_DRDY,
    STATUS_ERR,
    AtaCommand,
    AtaOp,
    identify_page,
    plan_ata,
)

SUPPORTED = {int(c) for c in AtaCommand}


def word(page: bytes, index: int) -> int:
    return struct.unpack_from("<H", page, 2 * index)[0]


def ata_string(page: bytes, first_word: int, n_words: int) -> str:
    """Decode an ATA string the way the spec defines it: first character in each word's MSB."""
    chars = []
    for i in range(first_word, first_word + n_words):
        w = word(page, i)
        chars += [chr(w >> 8), chr(w & 0xFF)]
    return "".join(chars)


def linux_aoe_size(page: bytes) -> tuple[bool, int]:
    """What drivers/block/aoe/aoecmd.c:ataid_complete derives from the page."""
    n = word(page, 83) | word(page, 86)
    if n & (1 << 10):
        return True, struct.unpack_from("<Q", page, 100 * 2)[0]
    return False, struct.unpack_from("<I", page, 60 * 2)[0]


# --- IDENTIFY DEVICE --------------------------------------------------------------------------


def test_identify_page_is_512_bytes_with_valid_checksum() -> None:
    page = identify_page(2048, serial="S1")
    assert len(page) == 512
    assert page[510] == 0xA5
    assert sum(page) % 256 == 0


def test_identify_small_disk_sizes() -> None:
    page = identify_page(2048, serial="S1")
    assert word(page, 60) | word(page, 61) << 16 == 2048
    assert struct.unpack_from("<Q", page, 200)[0] == 2048
    assert linux_aoe_size(page) == (True, 2048)


@pytest.mark.parametrize("size", [MAX_LBA28_SECTORS + 1, 1 << 40, 1 << 48])
def test_identify_large_disk_caps_28_bit_count(size: int) -> None:
    page = identify_page(size, serial="S1")
    assert word(page, 60) | word(page, 61) << 16 == MAX_LBA28_SECTORS
    assert sum(word(page, 100 + i) << (16 * i) for i in range(4)) == size
    assert linux_aoe_size(page) == (True, size)


def test_identify_feature_words() -> None:
    page = identify_page(2048, serial="S1")
    assert word(page, 0) & 0x8000 == 0  # an ATA (not ATAPI) device
    assert word(page, 49) & (1 << 9)  # LBA supported
    assert word(page, 80) & 0x00F0 == 0x00F0  # ATA/ATAPI-4 .. -7
    assert word(page, 81) == 0  # minor version not reported
    assert word(page, 82) & (1 << 5)  # write cache supported
    assert word(page, 85) & (1 << 5)  # and enabled
    w83, w86 = word(page, 83), word(page, 86)
    assert w83 >> 14 == 0b01  # word valid
    for bit in (10, 12, 13):  # LBA48, FLUSH CACHE, FLUSH CACHE EXT
        assert w83 & (1 << bit) and w86 & (1 << bit)
    assert word(page, 84) >> 14 == 0b01 and word(page, 87) >> 14 == 0b01


def test_identify_strings_are_byte_swapped_per_word() -> None:
    page = identify_page(2048, serial="SER-123", model="Model X", firmware="FW1")
    assert ata_string(page, 10, 10) == "SER-123".ljust(20)
    assert ata_string(page, 23, 4) == "FW1".ljust(8)
    assert ata_string(page, 27, 20) == "Model X".ljust(40)
    assert page[20:24] == b"ES-R"  # the raw bytes: each pair swapped
    assert ata_string(identify_page(1, serial="x"), 27, 20) == MODEL.ljust(40)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"serial": "x" * 21},
        {"serial": "caf\u00e9"},
        {"serial": "a\nb"},
        {"serial": "s", "model": "m" * 41},
        {"serial": "s", "firmware": "123456789"},
    ],
)
def test_identify_rejects_bad_strings(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        identify_page(100, **kwargs)


@pytest.mark.parametrize("size", [0, -1, (1 << 48) + 1])
def test_identify_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(ValueError):
        identify_page(size, serial="s")


# --- planning ---------------------------------------------------------------------------------


def plan(command: int, lba: int = 0, count: int = 1, *, size: int = 1000, read_only: bool = False):
    return plan_ata(command, lba, count, size_sectors=size, max_sectors=17, read_only=read_only)


@pytest.mark.parametrize(
    ("command", "op"),
    [
        (AtaCommand.READ_SECTORS, AtaOp.READ),
        (AtaCommand.READ_SECTORS_EXT, AtaOp.READ),
        (AtaCommand.WRITE_SECTORS, AtaOp.WRITE),
        (AtaCommand.WRITE_SECTORS_EXT, AtaOp.WRITE),
    ],
)
def test_read_write_plans(command: int, op: AtaOp) -> None:
    result = plan(command, 990, 10)
    assert (result.op, result.lba, result.count) == (op, 990, 10)
    assert (result.status, result.error, result.sector_count) == (STATUS_DRDY, 0, 0)


def test_lba28_ignores_device_head_bits() -> None:
    # Linux sets lba3's high nibble to 0xE (LBA mode + obsolete bits) on 28-bit commands.
    result = plan(AtaCommand.READ_SECTORS, 0xE000_0005 | 0xAB << 32, 1)
    assert (result.op, result.lba) == (AtaOp.READ, 5)


def test_lba48_uses_all_six_bytes() -> None:
    size = 1 << 47
    result = plan(AtaCommand.READ_SECTORS_EXT, size - 2, 2, size=size)
    assert (result.op, result.lba) == (AtaOp.READ, size - 2)


@pytest.mark.parametrize(
    "command", [AtaCommand.READ_SECTORS_EXT, AtaCommand.WRITE_SECTORS_EXT, AtaCommand.READ_SECTORS]
)
@pytest.mark.parametrize(("lba", "count"), [(1000, 1), (999, 2), (1000, 0), (1 << 27, 1)])
def test_past_the_end_fails_with_idnf(command: int, lba: int, count: int) -> None:
    result = plan(command, lba, count)
    assert (result.op, result.status, result.error) == (
        AtaOp.FAIL,
        STATUS_DRDY | STATUS_ERR,
        ERROR_IDNF,
    )
    assert result.sector_count == count


def test_far_lba48_address_fails_with_idnf() -> None:
    assert plan(AtaCommand.READ_SECTORS_EXT, (1 << 48) - 1, 1).error == ERROR_IDNF


def test_last_sector_and_zero_count_are_fine() -> None:
    assert plan(AtaCommand.READ_SECTORS_EXT, 999, 1).op == AtaOp.READ
    assert plan(AtaCommand.READ_SECTORS_EXT, 999, 0).count == 0


def test_more_sectors_than_a_frame_carries_aborts() -> None:
    result = plan(AtaCommand.READ_SECTORS_EXT, 0, 18)
    assert (result.op, result.error, result.sector_count) == (AtaOp.FAIL, ERROR_ABRT, 18)
    assert plan(AtaCommand.WRITE_SECTORS_EXT, 0, 17).op == AtaOp.WRITE


def test_read_only_export_refuses_writes_only() -> None:
    assert plan(AtaCommand.WRITE_SECTORS_EXT, read_only=True).error == ERROR_ABRT
    assert plan(AtaCommand.WRITE_SECTORS, read_only=True).op == AtaOp.FAIL
    assert plan(AtaCommand.READ_SECTORS_EXT, read_only=True).op == AtaOp.READ
    assert plan(AtaCommand.FLUSH_CACHE, read_only=True).op == AtaOp.FLUSH


def test_non_transfer_commands() -> None:
    assert plan(AtaCommand.FLUSH_CACHE).op == AtaOp.FLUSH
    assert plan(AtaCommand.FLUSH_CACHE_EXT).op == AtaOp.FLUSH
    assert plan(AtaCommand.IDENTIFY_DEVICE, count=0).op == AtaOp.IDENTIFY
    power = plan(AtaCommand.CHECK_POWER_MODE)
    assert (power.op, power.sector_count, power.status) == (AtaOp.CHECK_POWER, 0xFF, STATUS_DRDY)


@pytest.mark.parametrize("command", sorted(set(range(256)) - SUPPORTED))
def test_unsupported_commands_abort(command: int) -> None:
    result = plan(command, 5, 3)
    assert (result.op, result.status, result.error) == (
        AtaOp.FAIL,
        STATUS_DRDY | STATUS_ERR,
        ERROR_ABRT,
    )
    assert result.sector_count == 3
