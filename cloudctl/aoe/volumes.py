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
    """Fetch an image disk; zero chunks become holes. A wrong checksum leaves nothing."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=30) as answer, open(target, "wb") as out:
            while chunk := answer.read(_COPY_CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                for at in range(0, len(chunk), _HOLE_GRAIN):
                    piece = view[at : at + _HOLE_GRAIN]
                    if piece == _ZEROS[: len(piece)]:
                        out.seek(len(piece), os.SEEK_CUR)
                    else:
                        out.write(piece)
            out.truncate(out.tell())
    except (OSError, urllib.error.URLError) as exc:
        target.unlink(missing_ok=True)
        raise VolumeFileError(f"cannot fetch image disk {url}: {exc}") from None
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
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
