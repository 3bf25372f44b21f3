"""Block stores for AoE exports (the `BlockStore` protocol, an in-memory one, file-backed ones)
and the group commit that makes file writes durable: an acknowledged write is on stable storage.
Owns the backing file descriptors, pwritev and fdatasync; knows nothing of frames or sockets
(the target decides when to commit and what to answer).
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path
from typing import Protocol

from cloudctl.aoe.ata import SECTOR_SIZE

__all__ = [
    "MAX_TRANSFER",
    "BackingError",
    "BlockStore",
    "CommitGroup",
    "FileBlockStore",
    "MemoryBlockStore",
]

# The most one AoE frame can carry (255 sectors); the O_DIRECT bounce buffer holds one.
MAX_TRANSFER = 255 * SECTOR_SIZE
_PAGE = mmap.PAGESIZE
# Buffers per pwritev: Linux's IOV_MAX.
_IOV_MAX = 1024


class BackingError(Exception):
    """A backing file cannot be opened or used as an export; the message says which and why."""


class BlockStore(Protocol):
    """What an export reads and writes: byte offsets, whole sectors. Failures must raise
    OSError; they become ATA errors in the answer, never exceptions out of `Responder.handle`.

    A store may also offer `readinto(offset, buffer: memoryview) -> int`: the responder then
    reads straight into the answer frame instead of copying a returned bytes object.
    """

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def flush(self) -> None: ...


class MemoryBlockStore:
    """A bytearray-backed store for tests and scratch exports; `flushes` counts flush calls."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.flushes = 0

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self.buffer):
            raise OSError(errno.EIO, f"{length} bytes at {offset} beyond {len(self.buffer)}")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self.buffer[offset : offset + length])

    def readinto(self, offset: int, buffer: memoryview) -> int:
        length = len(buffer)
        self._check(offset, length)
        with memoryview(self.buffer) as view:
            buffer[:] = view[offset : offset + length]
        return length

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        self._check(offset, length)
        self.buffer[offset : offset + length] = data

    def flush(self) -> None:
        self.flushes += 1


class CommitGroup:
    """Stores written since the last `take`, so one pwritev per run of adjacent writes and one
    fdatasync per store cover a burst of writes (group commit).

    Buffered stores created with a group only queue a copy of the data in `write`; `take()`
    pwrites what they queued (in arrival order, adjacent writes merged: one 1 KiB pwrite costs
    ~6 us here, a merged one ~0.6 us per frame) and `sync()` fdatasyncs them. Whoever
    acknowledges those writes must first `commit()`, or `take()` and then `sync()` (which may run
    in another thread while the loop goes on writing: writes after the take wait for the next
    one). `take` runs in the thread that writes; a store's reads and flushes write out its queue
    first, so they see every write before them. `writes` counts accepted writes and `last_store`
    names the store of the latest one: the target tells write answers apart by them.
    """

    def __init__(self) -> None:
        self._dirty: dict[FileBlockStore, None] = {}
        # Stores whose queued writes failed to reach the file since the last take, and as of
        # that take: their writes in the taken group must not be acknowledged.
        self._unwritten: set[FileBlockStore] = set()
        self._taken_unwritten: set[FileBlockStore] = set()
        self.writes = 0
        self.last_store: FileBlockStore | None = None
        self.commits = 0  # fdatasync calls made by sync()
        self.failures = 0

    def __len__(self) -> int:
        return len(self._dirty)

    def mark(self, store: FileBlockStore) -> None:
        self._dirty[store] = None
        self.writes += 1
        self.last_store = store

    def take(self) -> list[FileBlockStore]:
        """Write out the queued writes; returns the stores written since the last take, and
        the group starts over empty."""
        dirty, self._dirty = self._dirty, {}
        for store in dirty:
            store.write_queued()
        self._taken_unwritten, self._unwritten = self._unwritten, set()
        return list(dirty)

    def _write_failed(self, store: FileBlockStore) -> None:
        self._unwritten.add(store)  # called by the store, in the thread that takes

    def sync(self, stores: list[FileBlockStore]) -> set[FileBlockStore]:
        """fdatasync each store; returns those that failed (their writes since the take must
        not be acknowledged). Safe to run in a worker thread, one call at a time."""
        failed, self._taken_unwritten = self._taken_unwritten, set()
        self.failures += len(failed)
        for store in stores:
            if store in failed:
                continue  # its data is not all in the file: no fdatasync makes it durable
            if store.failed is not None:
                # An earlier commit's fdatasync failed after these writes reached the page
                # cache; the kernel reported that error once, so this fdatasync could return 0
                # for pages that were lost with it.
                self.failures += 1
                failed.add(store)
                continue
            self.commits += 1
            try:
                store.fdatasync()
            except OSError:
                self.failures += 1
                failed.add(store)
        return failed

    def commit(self) -> set[FileBlockStore]:
        """take() and sync() in the caller's thread."""
        return self.sync(self.take())


class FileBlockStore:
    """A regular file or block device as a `BlockStore`.

    Reads go through the page cache, straight into the caller's buffer (`readinto`). Writes are
    positional; with a `group` they are queued (a copy: the caller's frame buffer is reused),
    written out at the group's next take and durable at its commit; without one they are
    written and fdatasynced at once. After a failed fdatasync the kernel may already have
    dropped the dirty pages (and reports the error only once), so the store then refuses every
    further write and flush: acknowledging one later would claim durability it cannot know.

    `direct=True` writes through a second O_DIRECT descriptor from a page-aligned bounce buffer
    (frame payloads sit at offset 36 of the receive buffer, never aligned). Measured here it was
    not faster than buffered writes plus one fdatasync per burst (see bench/README.md, AoE), and
    it still needs the fdatasync (device cache, allocating writes into sparse files), so the
    target uses buffered writes.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        read_only: bool = False,
        direct: bool = False,
        group: CommitGroup | None = None,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.direct = direct and not read_only
        self._group = group
        self._dirty = False
        self._queue: list[tuple[int, bytes]] = []  # (offset, data) not yet pwritten
        self._failed: OSError | None = None
        self._direct_fd = -1
        self._bounce: mmap.mmap | None = None
        flags = os.O_CLOEXEC | (os.O_RDONLY if read_only else os.O_RDWR)
        try:
            self._fd = os.open(self.path, flags)
        except OSError as exc:
            raise BackingError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self.size_bytes = self._measure()
            if self.direct:
                self._direct_fd = self._open_direct()
                # Anonymous mmap memory is page aligned, which satisfies O_DIRECT everywhere.
                self._bounce = mmap.mmap(-1, (MAX_TRANSFER + _PAGE - 1) // _PAGE * _PAGE)
        except BaseException:
            self.close()
            raise

    def _measure(self) -> int:
        # lseek(SEEK_END) sizes block devices too, where st_size is 0.
        size = os.lseek(self._fd, 0, os.SEEK_END)
        if size < SECTOR_SIZE:
            raise BackingError(f"{self.path} is {size} bytes: an export needs at least one sector")
        return size

    def _open_direct(self) -> int:
        try:
            return os.open(self.path, os.O_CLOEXEC | os.O_RDWR | os.O_DIRECT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise BackingError(
                    f"{self.path}: the filesystem does not support O_DIRECT"
                ) from None
            raise BackingError(f"cannot open {self.path} with O_DIRECT: {exc.strerror}") from None

    @property
    def size_sectors(self) -> int:
        return self.size_bytes // SECTOR_SIZE

    @property
    def read_fd(self) -> int:
        """The buffered descriptor reads use (-1 once closed): the C READ fast path preads it
        directly. Queued writes need not be out first: no WRITE is acknowledged before its
        group took it (pwritev), and a READ racing an unacknowledged WRITE may see either."""
        return self._fd

    @property
    def dirty(self) -> bool:
        """Written and not yet synced by `sync` (a grouped store's writes are the group's)."""
        return self._dirty

    @property
    def failed(self) -> OSError | None:
        """The fdatasync error that poisoned this store, if any."""
        return self._failed

    def refresh_size(self) -> int:
        """Re-read the size (the file may have grown); returns it in bytes."""
        self.size_bytes = self._measure()
        return self.size_bytes

    # --- BlockStore -------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        if self._queue:
            self.write_queued()
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of {self.path} at {offset}")
        return data

    def readinto(self, offset: int, buffer: memoryview) -> int:
        if self._queue:
            self.write_queued()
        return os.preadv(self._fd, [buffer], offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise OSError(errno.EIO, f"{self.path}: an earlier fdatasync failed")
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path} is exported read-only")
        if self._group is not None and not self.direct:
            self._queue.append((offset, bytes(data)))
            self._group.mark(self)
            return
        if self.direct:
            self._write_direct(offset, data)
        else:
            self._write_all(self._fd, offset, memoryview(data))
        if self._group is not None:
            self._group.mark(self)
        else:
            self._dirty = True
            self.sync()

    def flush(self) -> None:
        """ATA FLUSH CACHE: everything written so far reaches stable storage. Always an
        fdatasync: a group commit of this store may still be running in another thread."""
        if self._failed is not None:
            raise OSError(errno.EIO, f"{self.path}: an earlier fdatasync failed")
        if self._queue and not self.write_queued():
            raise OSError(errno.EIO, f"{self.path}: queued writes failed")
        self._dirty = False
        self.fdatasync()

    def write_queued(self) -> bool:
        """pwrite the queued writes in order, each run of adjacent ones with one pwritev; False
        if some failed (the group then fails their acknowledgements). Never raises OSError."""
        queue, self._queue = self._queue, []
        ok = True
        start = end = -1
        run: list[bytes] = []
        for offset, data in queue:
            if offset != end or len(run) == _IOV_MAX:
                ok = self._write_run(start, end, run) and ok
                start, run = offset, []
            run.append(data)
            end = offset + len(data)
        return self._write_run(start, end, run) and ok

    def _write_run(self, start: int, end: int, run: list[bytes]) -> bool:
        if not run:
            return True
        try:
            done = os.pwritev(self._fd, run, start)
            if done < end - start:  # short (a full disk, a signal): finish it or learn why
                self._write_all(self._fd, start + done, memoryview(b"".join(run))[done:])
        except OSError:
            assert self._group is not None
            self._group._write_failed(self)
            return False
        return True

    # --- durability -------------------------------------------------------------------------

    def sync(self) -> None:
        """fdatasync if anything was written since the last sync (stores without a group)."""
        if self._dirty:
            self._dirty = False  # before the call: a write racing with it stays dirty
            self.fdatasync()

    def fdatasync(self) -> None:
        """Raises OSError on failure, after which the store refuses writes for good (see the
        class docstring)."""
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._failed = exc
            self._dirty = True
            raise

    def close(self) -> None:
        if self._queue and self._fd >= 0:
            self.write_queued()  # best effort: nobody was told these writes are durable
        for fd in (self._fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._direct_fd = -1
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _write_all(fd: int, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise OSError(errno.EIO, "pwrite wrote nothing")
            done += n

    def _write_direct(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        if offset % SECTOR_SIZE or length % SECTOR_SIZE or length > MAX_TRANSFER:
            raise OSError(errno.EINVAL, f"O_DIRECT write of {length} bytes at {offset}")
        assert self._bounce is not None
        with memoryview(self._bounce) as bounce:
            bounce[:length] = data
            self._write_all(self._direct_fd, offset, bounce[:length])
