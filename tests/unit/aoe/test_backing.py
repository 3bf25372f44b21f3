"""File-backed block stores: positional I/O, when fdatasync happens (per write, or once per
group commit), what a failed fdatasync does to the store, and O_DIRECT writes from unaligned
frame buffers."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.backing import MAX_TRANSFER, BackingError, CommitGroup, FileBlockStore
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    ATA_DATA_OFFSET,
    AoeFrame,
    AtaArg,
    decode_frame,
    encode_frame,
)
from cloudctl.aoe.responder import Export, Responder

TARGET = bytes.fromhex("020000000001")
HOST = bytes.fromhex("525400000001")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 512))
    return path


@pytest.fixture
def syncs(monkeypatch):
    """Every fdatasync call's fd, in order; the real call still happens."""
    calls: list[int] = []
    real = os.fdatasync

    def recording(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", recording)
    return calls


def frame_view(payload: bytes) -> memoryview:
    """The payload where the target has it: at offset 36 of a receive buffer."""
    buf = bytearray(ATA_DATA_OFFSET) + payload
    return memoryview(buf)[ATA_DATA_OFFSET:]


def test_read_write_round_trip_and_size(image):
    store = FileBlockStore(image)
    try:
        assert store.size_bytes == 64 * 512 and store.size_sectors == 64
        store.write(1024, frame_view(b"a" * 512))
        assert store.read(1024, 512) == b"a" * 512
        answer = bytearray(ATA_DATA_OFFSET + 512)
        with memoryview(answer) as view:
            assert store.readinto(1024, view[ATA_DATA_OFFSET:]) == 512
        assert answer[ATA_DATA_OFFSET:] == b"a" * 512
    finally:
        store.close()
    assert image.read_bytes()[1024:1536] == b"a" * 512


def test_without_a_group_every_write_is_synced_before_it_returns(image, syncs):
    store = FileBlockStore(image)
    store.write(0, b"x" * 512)
    store.write(512, b"y" * 512)
    assert len(syncs) == 2 and not store.dirty
    store.sync()  # nothing new: no extra fdatasync
    assert len(syncs) == 2
    store.close()


def test_group_commit_syncs_each_dirty_store_once_per_burst(tmp_path, syncs):
    paths = [tmp_path / f"{i}.img" for i in range(3)]
    for path in paths:
        path.write_bytes(bytes(16 * 512))
    group = CommitGroup()
    stores = [FileBlockStore(p, group=group) for p in paths]
    for i in range(10):
        stores[i % 2].write(512 * i, b"d" * 512)
    assert syncs == [] and len(group) == 2  # nothing durable claimed yet
    assert group.writes == 10 and group.last_store is stores[1]
    assert group.commit() == set()
    assert sorted(syncs) == sorted([stores[0]._fd, stores[1]._fd])  # store 2 was never written
    assert group.commits == 2 and len(group) == 0
    assert group.commit() == set() and len(syncs) == 2  # an empty commit does nothing
    for store in stores:
        store.close()


def test_flush_always_syncs_even_while_a_group_commit_is_pending(image, syncs):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"z" * 512)
    taken = group.take()  # a commit of this store starts (in the target: in a worker thread)
    store.flush()  # ATA FLUSH CACHE meanwhile must not rely on that commit having finished
    assert len(syncs) == 1
    assert group.sync(taken) == set() and len(syncs) == 2
    store.flush()
    assert len(syncs) == 3  # a flush is rare; it never skips the fdatasync
    store.close()


def test_writes_after_a_take_wait_for_the_next_commit(image, syncs):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"1" * 512)
    taken = group.take()
    store.write(512, b"2" * 512)  # during the first commit's fdatasync
    assert group.sync(taken) == set() and len(group) == 1
    assert group.commit() == set() and len(syncs) == 2 and len(group) == 0
    store.close()


def test_failed_fdatasync_poisons_the_store(image, monkeypatch):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"q" * 512)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fdatasync", broken)
    assert group.commit() == {store}
    assert group.failures == 1 and isinstance(store.failed, OSError)
    monkeypatch.undo()
    # A later fdatasync could succeed without the lost pages: nothing is acknowledged again.
    with pytest.raises(OSError) as raised:
        store.write(512, b"r" * 512)
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):
        store.flush()
    assert store.read(0, 512) == b"q" * 512  # reads still work
    store.close()


def test_read_only_store_refuses_writes(image):
    store = FileBlockStore(image, read_only=True)
    with pytest.raises(OSError) as raised:
        store.write(0, b"w" * 512)
    assert raised.value.errno == errno.EROFS
    store.close()


def test_open_errors_name_the_file(tmp_path):
    with pytest.raises(BackingError, match=r"missing\.img"):
        FileBlockStore(tmp_path / "missing.img")
    tiny = tmp_path / "tiny.img"
    tiny.write_bytes(b"x" * 100)
    with pytest.raises(BackingError, match="at least one sector"):
        FileBlockStore(tiny)


def test_refresh_size_sees_a_grown_file(image):
    store = FileBlockStore(image)
    with image.open("ab") as handle:
        handle.write(bytes(8 * 512))
    assert store.refresh_size() == 72 * 512 and store.size_sectors == 72
    store.close()


def test_direct_writes_use_an_aligned_bounce_buffer(image, syncs):
    try:
        store = FileBlockStore(image, direct=True, group=CommitGroup())
    except BackingError as exc:
        pytest.skip(f"no O_DIRECT here: {exc}")
    assert fcntl.fcntl(store._direct_fd, fcntl.F_GETFL) & os.O_DIRECT
    assert not fcntl.fcntl(store._fd, fcntl.F_GETFL) & os.O_DIRECT  # reads use the page cache
    payload = os.urandom(17 * 512)  # a full jumbo frame, starting at the unaligned offset 36
    store.write(4096, frame_view(payload))
    assert store.read(4096, len(payload)) == payload  # O_DIRECT invalidated the cached pages
    for offset, length in ((100, 512), (512, 100), (0, MAX_TRANSFER + 512)):
        with pytest.raises(OSError) as raised:
            store.write(offset, bytes(length))
        assert raised.value.errno == errno.EINVAL
    assert syncs == []  # O_DIRECT alone is not durable: the group commit still syncs
    store.close()
    assert image.read_bytes()[4096 : 4096 + len(payload)] == payload


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_responder_writes_through_a_file_store(image, direct):
    group = CommitGroup()
    try:
        store = FileBlockStore(image, direct=direct, group=group)
    except BackingError as exc:
        pytest.skip(str(exc))
    export = Export(0, 1, store.size_sectors)
    responder = Responder({export: store}, target_mac=TARGET, max_sectors_per_frame=2)
    data = os.urandom(1024)
    arg = AtaArg(AFLAG_EXTENDED | AFLAG_WRITE, 0, 2, AtaCommand.WRITE_SECTORS_EXT, 6, data)
    request = encode_frame(AoeFrame(TARGET, HOST, 0, 1, 5, arg))
    (answer,) = responder.handle(memoryview(bytearray(request)))
    assert decode_frame(answer).arg.cmd_status == 0x40  # DRDY, no ERR
    assert group.writes == 1 and group.last_store is store and len(group) == 1
    assert group.commit() == set() and len(group) == 0
    store.close()
    assert image.read_bytes()[6 * 512 : 8 * 512] == data


# --- queued writes: one pwritev per run of adjacent writes -------------------------------------


@pytest.fixture
def pwrites(monkeypatch):
    """(offset, total bytes, buffers) of every pwritev call, in order; the real call happens."""
    calls: list[tuple[int, int, int]] = []
    real = os.pwritev

    def recording(fd: int, buffers: list, offset: int) -> int:
        calls.append((offset, sum(len(b) for b in buffers), len(buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "pwritev", recording)
    return calls


def test_grouped_writes_are_queued_then_merged_in_order(image, pwrites, syncs):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    view = frame_view(b"a" * 1024)
    store.write(0, view)
    view[:] = b"x" * 1024  # the target reuses its receive buffer at once: the store copied
    store.write(1024, frame_view(b"b" * 1024))
    store.write(2048, frame_view(b"c" * 512))
    store.write(8192, frame_view(b"d" * 512))  # not adjacent: a second run
    store.write(8192 + 512, frame_view(b"e" * 512))
    store.write(1024, frame_view(b"f" * 512))  # overwrites part of the first run: after it
    assert pwrites == [] and group.writes == 6
    assert group.commit() == set()
    assert pwrites == [(0, 2560, 3), (8192, 1024, 2), (1024, 512, 1)] and len(syncs) == 1
    store.close()
    data = image.read_bytes()
    assert data[:2560] == b"a" * 1024 + b"f" * 512 + b"b" * 512 + b"c" * 512
    assert data[8192 : 8192 + 1024] == b"d" * 512 + b"e" * 512


def test_reads_and_flushes_see_queued_writes(image, pwrites, syncs):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(512, b"r" * 512)
    assert store.read(512, 512) == b"r" * 512  # written out first, not yet synced
    assert len(pwrites) == 1 and syncs == []
    store.write(1024, b"s" * 512)
    answer = bytearray(512)
    with memoryview(answer) as view:
        store.readinto(1024, view)
    assert answer == b"s" * 512
    store.write(1536, b"t" * 512)
    store.flush()  # FLUSH CACHE: queued writes reach the file, then fdatasync
    assert len(pwrites) == 3 and len(syncs) == 1
    assert group.commit() == set() and len(syncs) == 2  # the group still syncs its own
    store.close()


def test_a_failed_write_out_fails_that_group_only(image, monkeypatch, syncs):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"1" * 512)

    def full(fd: int, buffers: list, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    assert group.commit() == {store}  # those writes must not be acknowledged
    assert syncs == [] and group.failures == 1
    store.write(512, b"2" * 512)  # a read fails the write-out too: the next group learns it
    assert store.read(512, 512) == bytes(512)
    assert group.commit() == {store}
    monkeypatch.setattr(os, "pwritev", _real_pwritev)
    store.write(1024, b"3" * 512)  # a write-out failure does not poison the store
    assert group.commit() == set() and len(syncs) == 1
    store.close()
    assert image.read_bytes()[:1536] == bytes(1024) + b"3" * 512


def test_write_out_failures_after_a_take_belong_to_the_next_commit(image, monkeypatch):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"1" * 512)
    taken = group.take()  # written out fine; its fdatasync would run in the worker
    store.write(512, b"2" * 512)
    monkeypatch.setattr(os, "pwritev", _broken_pwritev)
    store.read(512, 512)  # writes out the next group's data meanwhile, which fails
    assert group.sync(taken) == set()  # the running commit's writes are fine
    monkeypatch.undo()
    assert group.commit() == {store}
    store.close()


_real_pwritev = os.pwritev


def _broken_pwritev(fd: int, buffers: list, offset: int) -> int:
    raise OSError(errno.EIO, "I/O error")


def test_writes_queued_before_a_failed_fdatasync_are_never_acknowledged(image, monkeypatch):
    group = CommitGroup()
    store = FileBlockStore(image, group=group)
    store.write(0, b"1" * 512)
    taken = group.take()
    store.write(512, b"2" * 512)  # accepted while the first commit's fdatasync runs
    monkeypatch.setattr(os, "fdatasync", _broken_fdatasync)
    assert group.sync(taken) == {store}
    monkeypatch.undo()  # the kernel reports a writeback error once: the next call returns 0
    assert group.commit() == {store}
    store.close()


def _broken_fdatasync(fd: int) -> None:
    raise OSError(errno.EIO, "I/O error")
