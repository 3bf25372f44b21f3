"""The responder's READ/WRITE fast path against its general path: byte-identical answers, store
contents and counters for in-range and failing requests (28- and 48-bit LBAs, odd sector counts,
out-of-range LBAs, ACLs, reservations, broken stores) and for 20,000 mutated frames."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.backing import MemoryBlockStore
from cloudctl.aoe.codec import (
    AFLAG_ASYNC,
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    FLAG_RESPONSE,
    AoeFrame,
    AtaArg,
    ReserveCommand,
    ReserveReleaseArg,
    encode_frame,
)
from cloudctl.aoe.responder import Export, Responder
from tests.unit.aoe import test_fuzz

TARGET = bytes.fromhex("020000000001")
HOST_A = bytes.fromhex("525400000001")
HOST_B = bytes.fromhex("525400000002")
STRANGER = bytes.fromhex("525400000003")
SIZE = 40  # sectors
MAX_SECTORS = 5  # odd, and larger than 2 so that odd counts are in range
READS = (AtaCommand.READ_SECTORS, AtaCommand.READ_SECTORS_EXT)
WRITES = (AtaCommand.WRITE_SECTORS, AtaCommand.WRITE_SECTORS_EXT)


class BrokenStore(MemoryBlockStore):
    """Fails every read and write at or past sector 30."""

    def _check(self, offset: int, length: int) -> None:
        if offset + length > 30 * 512:
            raise OSError("bad sector")
        super()._check(offset, length)


class Pair:
    """Two responders over equal stores, one with the fast path and one without."""

    def __init__(self) -> None:
        self.sides = [self._side(fast) for fast in (True, False)]

    @staticmethod
    def _side(fast: bool) -> tuple[Responder, list[MemoryBlockStore]]:
        exports: dict[Export, MemoryBlockStore] = {
            Export(0, 1, SIZE): MemoryBlockStore(SIZE * 512),
            Export(0, 2, SIZE, allowed_macs=frozenset({HOST_A})): MemoryBlockStore(SIZE * 512),
            Export(0, 3, SIZE, read_only=True): MemoryBlockStore(SIZE * 512),
            Export(0, 4, SIZE): BrokenStore(SIZE * 512),
            Export(300, 7, SIZE): MemoryBlockStore(SIZE * 512),
        }
        for store in exports.values():
            store.buffer[:] = random.Random(5).randbytes(SIZE * 512)
        responder = Responder(
            exports, target_mac=TARGET, max_sectors_per_frame=MAX_SECTORS, fast_path=fast
        )
        return responder, list(exports.values())

    def handle(self, frame: bytes | bytearray | memoryview) -> list[bytes]:
        (fast, fast_stores), (general, general_stores) = self.sides
        fast_answers = [bytes(a) for a in fast.handle(frame)]
        general_answers = [bytes(a) for a in general.handle(frame)]
        assert fast_answers == general_answers
        assert fast.stats() == general.stats()
        for a, b in zip(fast_stores, general_stores, strict=True):
            assert a.buffer == b.buffer
        return fast_answers


def ata(
    command: int,
    lba: int,
    count: int,
    *,
    data: bytes | None = None,
    src: bytes = HOST_A,
    minor: int = 1,
    major: int = 0,
    aflags: int | None = None,
    feature: int = 0,
) -> bytes:
    ext = command in (AtaCommand.READ_SECTORS_EXT, AtaCommand.WRITE_SECTORS_EXT)
    write = command in WRITES
    if aflags is None:
        aflags = (AFLAG_EXTENDED if ext else 0) | (AFLAG_WRITE if write else 0)
    if data is None:
        data = random.Random(lba).randbytes(count * 512) if write else b""
    arg = AtaArg(aflags, feature, count, command, lba, data)
    return encode_frame(AoeFrame(TARGET, src, major, minor, 0x0A0B0C0D, arg))


@pytest.mark.parametrize("command", READS + WRITES, ids=lambda c: AtaCommand(c).name)
@pytest.mark.parametrize(
    ("lba", "count"),
    [
        (0, 1),
        (7, 3),  # odd count
        (SIZE - 5, 5),  # ends on the last sector, at the frame limit
        (SIZE - 1, 1),
        (SIZE - 2, 3),  # crosses the end: IDNF
        (SIZE, 1),
        (0xE000_0000 | 9, 1),  # device/head bits in lba3: masked for 28-bit, huge for 48-bit
        ((1 << 48) - 1, 1),
        (0, MAX_SECTORS + 1),  # more than one frame may carry: ABRT
        (0, 0),  # zero count: nothing transferred
        (3, 255),
    ],
)
def test_io_answers_are_byte_identical(command: int, lba: int, count: int) -> None:
    pair = Pair()
    for minor in (1, 2, 3, 4):  # plain, ACL'd, read-only, failing store
        for lba_at in (lba, lba + 28 if lba < SIZE else lba):
            pair.handle(ata(command, lba_at, count, minor=minor))
            pair.handle(ata(command, lba_at, count, minor=minor, src=STRANGER))
    pair.handle(ata(command, lba, count, major=300, minor=7))


def test_the_fast_path_answers_in_range_io() -> None:
    """The comparison above is only meaningful if the fast path really ran."""
    pair = Pair()
    fast, _ = pair.sides[0]
    fast._dispatch = None  # type: ignore[assignment]  # the general path must not be reached
    for command in READS + WRITES:
        frames = [ata(command, 3, 3), ata(command, 35, 5)]
        if command in (AtaCommand.READ_SECTORS, AtaCommand.WRITE_SECTORS):
            frames.append(ata(command, 0xE000_0000 | 1, 1))  # device/head bits in lba3
        for frame in frames:
            (answer,) = pair.handle(frame)
            assert answer[27] == 0x40  # DRDY, no ERR
    # 36-byte header and data, or a write answer padded to 60 bytes
    assert len(pair.handle(ata(AtaCommand.READ_SECTORS_EXT, 0, 5))[0]) == 36 + 5 * 512
    assert len(pair.handle(ata(AtaCommand.WRITE_SECTORS_EXT, 0, 5))[0]) == 60


def test_errors_acls_and_odd_frames_are_identical() -> None:
    pair = Pair()
    read, write = AtaCommand.READ_SECTORS_EXT, AtaCommand.WRITE_SECTORS_EXT
    assert pair.handle(ata(read, 0, 1, minor=2, src=STRANGER)) == []  # ACL: no answer at all
    assert pair.handle(ata(write, 0, 1, minor=2, src=STRANGER)) == []
    assert pair.handle(ata(write, 0, 2, minor=3))[0][27] & 1  # read-only: ERR
    assert pair.handle(ata(read, 31, 1, minor=4))[0][25] == 0x40  # store failure: UNC
    assert pair.handle(ata(write, 31, 1, minor=4))[0][25] == 0x04  # ABRT
    pair.handle(ata(write, 4, 3, data=bytes(3 * 512 - 1)))  # write data cut short
    pair.handle(ata(write, 4, 3, data=bytes(4 * 512)))  # longer than the count: padding
    pair.handle(ata(write, 4, 2, aflags=AFLAG_ASYNC | AFLAG_WRITE, feature=0x55))  # echoed
    pair.handle(ata(read, 4, 2, aflags=0xFF, feature=0xFF))
    pair.handle(ata(read, 4, 1, src=TARGET))  # our own frame: ignored
    pair.handle(ata(read, 4, 1, src=BROADCAST_MAC))  # group source: dropped
    pair.handle(ata(read, 4, 1, major=0xFFFF))  # broadcast ATA: ignored
    pair.handle(ata(read, 4, 1, minor=9))  # no such export
    frame = bytearray(ata(read, 4, 1))
    for at, value in ((14, 0x10 | FLAG_RESPONSE), (14, 0x20), (14, 0x11), (19, 0xF0), (12, 0x08)):
        changed = bytearray(frame)
        changed[at] = value
        pair.handle(changed)
    for cut in range(0, 37):
        pair.handle(frame[:cut])
    other_dst = bytearray(frame)
    other_dst[:6] = BROADCAST_MAC  # Ethernet broadcast destination: the general path serves it
    pair.handle(other_dst)
    pair.handle(memoryview(frame))


def test_reservations_are_honoured_on_both_paths() -> None:
    pair = Pair()
    reserve = ReserveReleaseArg(ReserveCommand.SET, (HOST_B,))
    pair.handle(encode_frame(AoeFrame(TARGET, HOST_B, 0, 1, 1, reserve)))
    for src in (HOST_A, HOST_B):
        for command in READS + WRITES:
            pair.handle(ata(command, 2, 2, src=src))  # HOST_A: TARGET_RESERVED; HOST_B served
    release = ReserveReleaseArg(ReserveCommand.SET, ())
    pair.handle(encode_frame(AoeFrame(TARGET, HOST_B, 0, 1, 2, release)))
    pair.handle(ata(AtaCommand.WRITE_SECTORS, 2, 2, src=HOST_A))


@settings(max_examples=400, deadline=None)
@given(
    command=st.sampled_from(READS + WRITES + (AtaCommand.IDENTIFY_DEVICE, 0x00, 0xFF)),
    lba=st.one_of(st.integers(0, SIZE + 3), st.integers(0, (1 << 48) - 1)),
    count=st.integers(0, 255),
    minor=st.integers(1, 5),
    src=st.sampled_from((HOST_A, HOST_B, STRANGER)),
    aflags=st.integers(0, 255),
    extra=st.integers(-600, 600),
)
def test_random_requests_are_identical(command, lba, count, minor, src, aflags, extra) -> None:
    frame = bytearray(ata(command, lba, 0, src=src, minor=minor, aflags=aflags))
    frame[26] = count
    if extra > 0:
        frame += random.Random(extra).randbytes(extra)  # data, or padding
    elif extra < 0:
        del frame[extra:]  # cut into the data or headers
    Pair().handle(frame)


def test_mutated_frames_give_identical_answers_and_never_raise() -> None:
    rng = random.Random(test_fuzz.SEED + 3)
    seeds = test_fuzz.corpus()
    fast = test_fuzz.responder()
    general = Responder(
        {e: MemoryBlockStore(e.size_sectors * 512) for e in fast.exports},
        target_mac=test_fuzz.TARGET,
        max_sectors_per_frame=2,
        fast_path=False,
    )
    for i in range(20_000):
        if i % 250 == 0:  # mask edits and reservations accumulate; start over now and then
            fast = test_fuzz.responder()
            general = Responder(
                {e: MemoryBlockStore(e.size_sectors * 512) for e in fast.exports},
                target_mac=test_fuzz.TARGET,
                max_sectors_per_frame=2,
                fast_path=False,
            )
        frame = test_fuzz.mutate(rng, rng.choice(seeds))
        assert [bytes(a) for a in fast.handle(frame)] == [bytes(a) for a in general.handle(frame)]
        assert fast.stats() == general.stats()
