"""Boot images on disk: import copies a kernel, initramfs and optional hypervisor under a name.

Files are copied into a hidden directory, checksummed on the way, and renamed into place in
one step, so a half-copied image is never served. Images are immutable once imported.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from cloudctl.state.models import Image

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
PARTS = ("kernel", "initrd", "hypervisor")


class ImageError(ValueError):
    """An image cannot be imported or removed; says what and why."""


def check_image_name(name: str) -> str:
    if not _NAME_RE.match(name) or ".." in name:
        raise ImageError(
            f"invalid image name {name!r}: use 1-63 lower-case letters, digits, '.', '_' and '-'"
        )
    return name


def _copy(source: Path, target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


def import_files(
    image_dir: Path,
    name: str,
    kernel: Path,
    initrd: Path,
    hypervisor: Path | None,
    disk: Path | None = None,
) -> Image:
    """Copy the files into image_dir/NAME/{kernel,initrd[,hypervisor][,disk]}; return the record.

    `disk` is a raw root-disk image that volumes can be created from (`volume create --from`).
    """
    check_image_name(name)
    sources = {"kernel": kernel, "initrd": initrd}
    if hypervisor is not None:
        sources["hypervisor"] = hypervisor
    if disk is not None:
        sources["disk"] = disk
    for part, source in sources.items():
        if not source.is_absolute():
            raise ImageError(f"{part} path {source} must be absolute (it is read by cloudctld)")
        if not source.is_file():
            raise ImageError(f"{part} {source} is not a readable file")
    final = image_dir / name
    image_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incoming-{name}-", dir=image_dir))
    try:
        sums, sizes, total = {}, {}, 0
        for part, source in sources.items():
            sums[part], sizes[part] = _copy(source, staging / part)
            total += sizes[part]
        if final.exists():
            # Left by an import that died before its record was written: nothing uses it.
            shutil.rmtree(final)
        os.rename(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageError(f"cannot import image {name}: {exc}") from None
    return Image(
        name=name,
        kernel_sha256=sums["kernel"],
        initrd_sha256=sums["initrd"],
        hypervisor_sha256=sums.get("hypervisor"),
        size=total,
        created_at=time.time(),
        disk_sha256=sums.get("disk"),
        disk_size=sizes.get("disk"),
    )


def remove_files(image_dir: Path, name: str) -> None:
    shutil.rmtree(image_dir / check_image_name(name), ignore_errors=True)
