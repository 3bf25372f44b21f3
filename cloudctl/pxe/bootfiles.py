"""Where a requested boot file comes from, for TFTP and HTTP alike.

In order: a file rendered for the asking node from the inventory (pxelinux.cfg/01-MAC, iPXE
scripts: never written to disk), imported images, the operator's TFTP root, and the boot
programs Debian's pxelinux/syslinux-common/ipxe packages install. Every on-disk name is
resolved inside its root; traversal is refused with BootFileError(ACCESS).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cloudctl.pxe.tftp.paths import TftpPathError, resolve_inside

# Debian's locations of the boot programs we offer (installed by the set-up script).
PACKAGED_FILES: dict[str, Path] = {
    "pxelinux.0": Path("/usr/lib/PXELINUX/pxelinux.0"),
    "lpxelinux.0": Path("/usr/lib/PXELINUX/lpxelinux.0"),
    "ldlinux.c32": Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
    "libcom32.c32": Path("/usr/lib/syslinux/modules/bios/libcom32.c32"),
    "libutil.c32": Path("/usr/lib/syslinux/modules/bios/libutil.c32"),
    "mboot.c32": Path("/usr/lib/syslinux/modules/bios/mboot.c32"),
    "menu.c32": Path("/usr/lib/syslinux/modules/bios/menu.c32"),
    "undionly.kpxe": Path("/usr/lib/ipxe/undionly.kpxe"),
    "ipxe.efi": Path("/usr/lib/ipxe/ipxe.efi"),
    "snponly.efi": Path("/usr/lib/ipxe/snponly.efi"),
}


class Refusal(Enum):
    NOT_FOUND = "not found"
    ACCESS = "access violation"


class BootFileError(Exception):
    """The file cannot be served; `refusal` says which TFTP error / HTTP status fits."""

    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


class RenderedFile:
    """A file made in memory for one request; `size` and `read` as the TFTP session wants."""

    def __init__(self, name: str, content: bytes) -> None:
        self.name = name
        self.content = content
        self.size = len(content)

    def read(self, offset: int, length: int) -> bytes:
        return self.content[offset : offset + length]

    def close(self) -> None:
        pass


class DiskFile:
    """An open file read with pread, so many transfers share no file position."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def fileno(self) -> int:
        """The open descriptor, for sendfile: no second open, no window for a swapped file."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


BootFile = RenderedFile | DiskFile
# (requested name, client MAC if known, client IP if known) -> content, or None: not rendered.
Renderer = Callable[[str, str | None, str | None], bytes | None]


@dataclass(frozen=True)
class BootFiles:
    roots: tuple[Path, ...]
    render: Renderer
    packaged: dict[str, Path]
    # (prefix, directory): "images/" -> image_dir serves images/NAME/kernel from image_dir/NAME.
    mounts: tuple[tuple[str, Path], ...] = ()

    def open(
        self, requested: str, *, mac: str | None = None, client_ip: str | None = None
    ) -> BootFile:
        """The file for `requested` (a TFTP filename or an HTTP path below /); close it after."""
        name = requested.replace("\\", "/").lstrip("/")
        content = self.render(name, mac, client_ip)
        if content is not None:
            return RenderedFile(name, content)
        places = [(root, requested) for root in self.roots]
        places[:0] = [
            (root, name[len(prefix) :]) for prefix, root in self.mounts if name.startswith(prefix)
        ]
        for root, inside in places:
            try:
                path = resolve_inside(root, inside)
            except TftpPathError as exc:
                raise BootFileError(Refusal.ACCESS, str(exc)) from None
            if path.is_file():
                return DiskFile(name, path)
        packaged = self.packaged.get(name)
        if packaged is not None and packaged.is_file():
            return DiskFile(name, packaged)
        raise BootFileError(Refusal.NOT_FOUND, f"{requested!r}: no such boot file")


def no_rendering(name: str, mac: str | None, client_ip: str | None) -> None:
    return None
