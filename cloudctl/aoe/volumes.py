"""Volume files on a storage node: create sparse, grow, copy for snapshots, trash on delete.

One file per leg, `<volume>.img` in the volume directory. Snapshots are copied with a reflink
where the filesystem has them (btrfs, XFS), else sparsely (holes stay holes). Deleted volumes
are moved to `.trash/` rather than unlinked: a mistaken delete can still be recovered by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

FICLONE = 0x40049409  # linux/fs.h: share the source's extents (reflink)
_COPY_CHUNK = 8 << 20
_HOLE_GRAIN = 64 << 10  # zero runs of this size in a downloaded disk become holes
_ZEROS = bytes(_HOLE_GRAIN)


class VolumeFileError(OSError):
    """A volume file could not be created, grown or copied."""


def volume_path(volume_dir: Path, volume: str) -> Path:
    return volume_dir / f"{volume}.img"


def ensure_file(
    path: Path,
    size: int,
    origin: Path | None = None,
    image: tuple[str, str] | None = None,
) -> bool:
    """Make `path` exist with at least `size` bytes; return True if it was created now.

    A new file starts as a copy of `origin` (a snapshot) or of an image's disk downloaded from
    `image` = (url, sha256), checked before the file is used; else it is all zeros.
    """
    created = False
    if not path.exists():
        partial = path.with_name(f".{path.name}.partial")
        if origin is not None:
            if not origin.exists():
                raise VolumeFileError(f"snapshot origin {origin} is not on this storage node")
            _copy(origin, partial)
        elif image is not None:
            _download(image[0], image[1], partial)
        else:
            with open(partial, "wb") as f:
                f.truncate(size)
        os.replace(partial, path)  # never export a half-made file
        created = True
    if path.stat().st_size < size:
        os.truncate(path, size)  # grow: the new tail reads as zeros
    return created


def _download(url: str, sha256: str, target: Path) -> None:
    """Fetch an image disk into a new file; zero runs become holes. A wrong checksum (or a
    failed fetch) leaves nothing."""
    try:
        with open(target, "wb") as out:
            download_into(url, sha256, out, holes=True)
            out.truncate(out.tell())
    except VolumeFileError:
        target.unlink(missing_ok=True)
        raise


def download_into(url: str, sha256: str, out: BinaryIO, *, holes: bool) -> None:
    """Stream an image disk into `out` from its start. With `holes`, zero runs are skipped
    (a new file reads them as zeros); a block device gets every byte. VolumeFileError if the
    fetch fails or the bytes do not match `sha256`."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            while chunk := answer.read(_COPY_CHUNK):
                digest.update(chunk)
                if not holes:
                    out.write(chunk)
                    continue
                view = memoryview(chunk)
                for at in range(0, len(chunk), _HOLE_GRAIN):
                    piece = view[at : at + _HOLE_GRAIN]
                    if piece == _ZEROS[: len(piece)]:
                        out.seek(len(piece), os.SEEK_CUR)
                    else:
                        out.write(piece)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, urllib.error.URLError) as exc:
        raise VolumeFileError(f"cannot fetch image disk {url}: {exc}") from None
    if digest.hexdigest() != sha256:
        raise VolumeFileError(f"image disk {url} does not match its checksum; not used")


def _copy(source: Path, target: Path) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return
        except OSError:
            pass  # no reflinks here: copy only the data, keep the holes
        size = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                data_at = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            hole_at = os.lseek(src.fileno(), data_at, os.SEEK_HOLE)
            while data_at < hole_at:
                n = os.copy_file_range(
                    src.fileno(),
                    dst.fileno(),
                    min(_COPY_CHUNK, hole_at - data_at),
                    data_at,
                    data_at,
                )
                if n <= 0:
                    break
                data_at += n
            offset = hole_at
        dst.truncate(size)
        os.fsync(dst.fileno())


def trash(path: Path) -> Path:
    """Move a deleted volume's file aside; returns where it went."""
    bin_dir = path.parent / ".trash"
    bin_dir.mkdir(exist_ok=True)
    target = bin_dir / f"{path.name}.{int(time.time())}"
    os.replace(path, target)
    return target


class FileVolumes:
    """Legs as sparse files in one directory (the default backend of a storage node)."""

    def __init__(self, volume_dir: Path) -> None:
        self.volume_dir = volume_dir

    def prepare(self) -> None:
        self.volume_dir.mkdir(parents=True, exist_ok=True)

    def path(self, volume: str) -> Path:
        return volume_path(self.volume_dir, volume)

    def ensure(
        self, volume: str, size: int, origin: str | None, image: tuple[str, str] | None
    ) -> bool:
        source = self.path(origin) if origin else None
        return ensure_file(self.path(volume), size, source, image)

    def remove(self, volume: str) -> str | None:
        path = self.path(volume)
        return str(trash(path)) if path.exists() else None
