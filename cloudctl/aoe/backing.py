"""File-backed block stores for AoE exports, and the group commit that makes their writes durable:
an acknowledged write is on stable storage. Owns the backing file descriptors and fdatasync;
knows nothing of frames or sockets (the target decides when to commit and what to answer).
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from cloudctl.aoe.ata import SECTOR_SIZE

__all__ = ["MAX_TRANSFER", "BackingError", "CommitGroup", "FileBlockStore"]

# The most one AoE frame can carry (255 sectors); the O_DIRECT bounce buffer holds one.
MAX_TRANSFER = 255 * SECTOR_SIZE
_PAGE = mmap.PAGESIZE


class BackingError(Exception):
    """A backing file cannot be opened or used as an export; the message says which and why."""


class CommitGroup:
    """Stores written since the last `take`, so one fdatasync per store covers a burst of
    writes (group commit).

    Stores created with a group only pwrite in `write`; whoever acknowledges those writes must
    first `commit()`, or `take()` the written stores and `sync()` them (which may run in another
    thread while the loop goes on writing: writes after the take wait for the next one).
    `writes` counts successful writes and `last_store` names the store of the latest one: the
    target tells write answers apart by them.
    """

    def __init__(self) -> None:
        self._dirty: dict[FileBlockStore, None] = {}
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
        """The stores written since the last take; the group starts over empty."""
        dirty, self._dirty = self._dirty, {}
        return list(dirty)

    def sync(self, stores: list[FileBlockStore]) -> set[FileBlockStore]:
        """fdatasync each store; returns those that failed (their writes since the take must
        not be acknowledged). Safe to run in a worker thread, one call at a time."""
        failed: set[FileBlockStore] = set()
        for store in stores:
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
    """A regular file or block device as a `responder.BlockStore`.

    Reads go through the page cache, straight into the caller's buffer (`readinto`). Writes are
    positional; with a `group` they become durable at the group's next commit, without one at
    once (fdatasync per write). After a failed fdatasync the kernel may already have dropped the
    dirty pages (and reports the error only once), so the store then refuses every further
    write and flush: acknowledging one later would claim durability it cannot know.

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
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read of {self.path} at {offset}")
        return data

    def readinto(self, offset: int, buffer: memoryview) -> int:
        return os.preadv(self._fd, [buffer], offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise OSError(errno.EIO, f"{self.path}: an earlier fdatasync failed")
        if self.read_only:
            raise OSError(errno.EROFS, f"{self.path} is exported read-only")
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
        self._dirty = False
        self.fdatasync()

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
