"""The C fast path (cloudctl/aoe/_fastio.c) against the Python responder: every answer it gives
is byte for byte the responder's, it answers the in-range READs and queues the in-range WRITEs
of allowed hosts and hands everything else back, its queued WRITEs reach the file and are
answered as errors where the commit failed, it follows MAC mask and reservation changes once its
table is set again, and 100,000 mutated frames never crash it nor get an answer the responder
would not give."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest

from cloudctl.aoe import _fastio  # built by `pip install -e .`: not built is a failure
from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.backing import CommitGroup, FileBlockStore
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    AoeFrame,
    AtaArg,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    MaskDirectiveCommand,
    ReserveCommand,
    ReserveReleaseArg,
    encode_frame,
)
from cloudctl.aoe.responder import Export, Responder
from tests.unit.aoe import test_fuzz

TARGET, HOST_A, HOST_B = test_fuzz.TARGET, test_fuzz.HOST_A, test_fuzz.HOST_B
STRANGER = bytes.fromhex("525400000003")
READ, READ_EXT = AtaCommand.READ_SECTORS, AtaCommand.READ_SECTORS_EXT
WRITE, WRITE_EXT = AtaCommand.WRITE_SECTORS, AtaCommand.WRITE_SECTORS_EXT


class Rig:
    """The fuzz corpus's exports as files (random contents), a responder over them and a
    FastPath holding the responder's table."""

    def __init__(self, tmp_path: Path, max_sectors: int = 2) -> None:
        rng = random.Random(7)
        specs = [
            Export(0, 1, 64),
            Export(0, 2, 8, allowed_macs=frozenset({HOST_A, HOST_B})),
            Export(1, 1, 16, read_only=True, config_string=b"prefix"),
        ]
        self.stores = {}
        for spec in specs:
            path = tmp_path / f"e{spec.shelf}.{spec.slot}"
            path.write_bytes(rng.randbytes(spec.size_sectors * 512))
            # A group: the responder queues its writes instead of syncing each.
            self.stores[spec] = FileBlockStore(path, read_only=spec.read_only, group=CommitGroup())
        self.responder = Responder(
            self.stores, target_mac=TARGET, max_sectors_per_frame=max_sectors
        )
        self.fast = _fastio.FastPath(TARGET)
        self.refresh()
        self.out = bytearray(65536)

    def refresh(self) -> None:
        max_sectors, exports, _ = self.responder.native_table()
        self.fast.set_exports(max_sectors, exports)

    def answer(self, frame: bytes | bytearray) -> bytes | None:
        n = self.fast.answer(frame, self.out)
        return bytes(self.out[:n]) if n else None

    def close(self) -> None:
        for store in self.stores.values():
            store.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def read(lba: int, count: int, *, command: int = READ_EXT, src: bytes = HOST_A, major=0, minor=1):
    aflags = AFLAG_EXTENDED if command == READ_EXT else 0
    arg = AtaArg(aflags, 0, count, command, lba)
    return encode_frame(AoeFrame(TARGET, src, major, minor, 0x01020304, arg))


@pytest.mark.parametrize("command", (READ, READ_EXT), ids=("READ", "READ_EXT"))
@pytest.mark.parametrize(("lba", "count"), [(0, 1), (5, 2), (62, 2), (63, 1)])
def test_in_range_reads_get_the_responders_exact_answer(rig, command, lba, count) -> None:
    frame = read(lba, count, command=command)
    got = rig.answer(frame)
    assert got is not None
    assert len(got) == 36 + count * 512
    assert [got] == [bytes(a) for a in rig.responder.handle(frame)]


def test_28_bit_reads_ignore_the_device_bits_as_the_responder_does(rig) -> None:
    frame = read(0xE000_0003, 1, command=READ)
    got = rig.answer(frame)
    assert got is not None and got[28:32] == frame[28:32]  # LBA echoed as sent
    assert [got] == [bytes(a) for a in rig.responder.handle(frame)]


def write(lba: int, data: bytes, *, command: int = WRITE_EXT, major=0, minor=1) -> bytes:
    aflags = (AFLAG_EXTENDED if command == WRITE_EXT else 0) | AFLAG_WRITE
    arg = AtaArg(aflags, 0, len(data) // 512, command, lba, data)
    return encode_frame(AoeFrame(TARGET, HOST_A, major, minor, 0x05060708, arg))


def test_everything_but_a_servable_read_or_write_goes_back_to_python(rig) -> None:
    identify = AtaArg(0, 0, 1, AtaCommand.IDENTIFY_DEVICE, 0)
    frames = [
        write(0, bytes(512), major=1, minor=1),  # read-only export
        write(0, bytes(1024))[: 36 + 1023],  # data cut short
        write(63, bytes(1024)),  # crosses the end
        encode_frame(AoeFrame(TARGET, HOST_A, 0, 1, 1, identify)),
        read(63, 2),  # crosses the end
        read(64, 1),
        read(0, 3),  # more than a frame may carry
        read(0, 0),
        read(0, 1, src=STRANGER, minor=2),  # not in the MAC mask
        read(0, 1, minor=9),  # no such export
        read(0, 1, src=TARGET),  # our own frame
        read(0, 1, src=BROADCAST_MAC),
        read(0, 1, major=0xFFFF),
        read(0, 1)[:35],
    ]
    base = bytearray(read(0, 1))
    for at, value in ((14, 0x18), (14, 0x20), (14, 0x11), (19, 1), (12, 0x08), (0, 0xFF)):
        changed = bytearray(base)
        changed[at] = value
        frames.append(bytes(changed))
    for frame in frames:
        assert rig.answer(frame) is None, frame.hex()
    assert rig.fast.queued() == 0


@pytest.mark.parametrize("command", (WRITE, WRITE_EXT), ids=("WRITE", "WRITE_EXT"))
def test_writes_are_queued_written_out_and_answered_like_the_responders(tmp_path, command) -> None:
    rig = Rig(tmp_path)
    (tmp_path / "twin").mkdir()
    twin = Rig(tmp_path / "twin")  # the same contents, served in Python
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        rng = random.Random(3)
        frames = [write(lba, rng.randbytes(1024), command=command) for lba in (4, 6, 8, 30, 0)]
        for frame in frames:
            got = rig.answer(frame)
            assert got is not None
            assert [got] == [bytes(a) for a in twin.responder.handle(frame)]
        assert rig.fast.queued() == 5
        batch, written, failed = rig.fast.take_writes()
        assert rig.fast.queued() == 0 and failed == []
        (store,) = [s for s in rig.stores.values() if s.path.name == "e0.1"]
        assert written == [store.read_fd]
        for s in twin.stores.values():
            s.write_queued()
        assert (tmp_path / "e0.1").read_bytes() == (tmp_path / "twin" / "e0.1").read_bytes()
        assert rig.fast.finish(ours.fileno(), batch, []) == 5
        answers = [theirs.recv(100) for _ in frames]
        assert answers == [bytes(a) for f in frames for a in twin.responder.handle(f)]
        assert rig.fast.finish(ours.fileno(), batch, []) == 0  # answered once only
        # A failed commit: the same WRITEs answered as ATA errors (ABRT, count, DRDY|ERR).
        for frame in frames:
            rig.answer(frame)
        batch, written, _ = rig.fast.take_writes()
        assert rig.fast.finish(ours.fileno(), batch, written) == 5
        for frame in frames:
            answer = theirs.recv(100)
            assert (answer[25], answer[26], answer[27]) == (0x04, 2, 0x41)
            assert answer[20:24] == frame[20:24]
    finally:
        ours.close()
        theirs.close()
        rig.close()
        twin.close()


def test_mask_and_reservation_changes_take_effect_with_the_next_table(rig) -> None:
    assert rig.answer(read(0, 1, src=STRANGER)) is not None  # 0.1 serves every host
    add = MacMaskArg(MaskCommand.EDIT, 0, (MaskDirective(MaskDirectiveCommand.ADD, HOST_A),))
    assert rig.responder.handle(encode_frame(AoeFrame(TARGET, HOST_A, 0, 1, 2, add)))
    rig.refresh()
    assert rig.answer(read(0, 1, src=STRANGER)) is None
    assert rig.answer(read(0, 1, src=HOST_A)) is not None
    reserve = ReserveReleaseArg(ReserveCommand.SET, (HOST_B,))
    rig.responder.handle(encode_frame(AoeFrame(TARGET, HOST_B, 0, 2, 3, reserve)))
    rig.refresh()
    assert rig.answer(read(0, 1, src=HOST_A, minor=2)) is None  # reserved for B
    assert rig.answer(read(0, 1, src=HOST_B, minor=2)) is not None


def test_a_short_read_goes_back_to_python_which_answers_with_an_error(rig, tmp_path) -> None:
    os.truncate(tmp_path / "e0.1", 10 * 512)  # the file shrank under the export
    frame = read(20, 1)
    assert rig.answer(frame) is None
    (answer,) = rig.responder.handle(frame)
    assert answer[27] & 1  # ERR


def test_an_empty_table_serves_nothing_and_bad_tables_are_refused(rig) -> None:
    rig.fast.set_exports(2, [])
    assert rig.answer(read(0, 1)) is None
    prefix = bytes(14)
    with pytest.raises(ValueError, match="max_sectors"):
        rig.fast.set_exports(0, [])
    with pytest.raises(ValueError, match="prefix"):
        rig.fast.set_exports(2, [(0, 1, 0, 8, b"short", b"", b"", True)])
    with pytest.raises(ValueError, match="two exports"):
        rig.fast.set_exports(2, [(0, 1, 0, 8, prefix, b"", b"", True)] * 2)
    with pytest.raises(ValueError, match="distinct"):
        rig.fast.answer(rig.out, rig.out)
    with pytest.raises(ValueError, match="6 bytes"):
        _fastio.FastPath(b"\x02")


@pytest.mark.parametrize("max_sectors", (2, 17))
def test_mutated_frames_never_get_an_answer_the_responder_would_not_give(
    tmp_path, max_sectors
) -> None:
    rig = Rig(tmp_path, max_sectors)
    rng = random.Random(test_fuzz.SEED + 11)
    # The corpus (every kind of request) and as many READs the C path serves.
    reads = [
        read(lba, 2, command=c, minor=m) for c in (READ, READ_EXT) for m in (1, 2) for lba in (0, 6)
    ]
    reads += [write(lba, bytes(1024), command=c) for c in (WRITE, WRITE_EXT) for lba in (0, 6)]
    seeds = test_fuzz.corpus() + reads * 2
    answered = 0
    try:
        for i in range(test_fuzz.MUTATIONS // 2):
            if i % 250 == 0:  # mask edits and reservations accumulate; start over now and then
                rig.close()
                rig = Rig(tmp_path, max_sectors)
            frame = test_fuzz.mutate(rng, rng.choice(seeds))
            got = rig.answer(frame)
            expected = [bytes(a) for a in rig.responder.handle(frame)]
            if got is not None:
                answered += 1
                assert expected == [got], frame.hex()
            elif frame[19:20] in (b"\x02", b"\x03"):  # as the port does after such frames
                rig.refresh()
    finally:
        rig.close()
    assert answered > 2000  # mutations that left a servable READ (seeded: ~2,650)
