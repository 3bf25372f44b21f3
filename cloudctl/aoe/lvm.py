"""Volume legs as LVM logical volumes, on a storage node that has a volume group for them.

One LV per leg, `cc-<volume>` in the volume group. A new LV is made under a `.partial` name,
zeroed whole (a thick LV's blocks still hold whatever volume used them before: another tenant's
data), filled (a snapshot copies its origin, a volume from an image gets the image's disk), then
renamed, so a half-filled LV is never exported. Deleted volumes are renamed
`cc-<volume>.trash-<time>`, like files moved to .trash/. Commands go through `run(argv)`: tests
run them in a qemu guest, since this development machine's kernel has no device-mapper.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudctl.aoe.volumes import VolumeFileError, download_into

PREFIX = "cc-"
_VG_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$")
_COPY = "4M"


class LvmError(VolumeFileError):
    """An LVM command failed; the message has its output."""


def run_local(argv: Sequence[str]) -> str:
    """Run an LVM command here; its stdout, or LvmError with what it said."""
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = "; ".join(
            line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()
        )
        raise LvmError(f"{' '.join(argv)}: {said}")  # one line, for the operator's terminal
    return done.stdout


def check_volume_group(name: str) -> str:
    if not _VG_RE.match(name) or name in (".", ".."):
        raise LvmError(f"invalid volume group name {name!r}")
    return name


class LvmVolumes:
    """The FileVolumes interface (prepare, path, ensure, remove) over logical volumes."""

    def __init__(
        self,
        volume_group: str,
        run: Callable[[Sequence[str]], str] = run_local,
        fill_from_image: Callable[[str, str, Path], None] | None = None,
    ) -> None:
        self.vg = check_volume_group(volume_group)
        self.run = run
        self.fill_from_image = fill_from_image or _fill_from_image
        # LV sizes as of prepare(), kept up to date by our own commands: one `lvs` per agent
        # round instead of one per leg. None: read them again.
        self._known: dict[str, int] | None = None

    def prepare(self) -> None:
        """Check the volume group and read its LVs (the agent calls this every round)."""
        self.run(["vgs", "--noheadings", "-o", "vg_name", self.vg])  # LvmError if missing
        self._known = self.sizes()

    def _lvs(self) -> dict[str, int]:
        if self._known is None:
            self._known = self.sizes()
        return self._known

    def path(self, volume: str) -> Path:
        return Path(f"/dev/{self.vg}/{PREFIX}{volume}")

    def sizes(self) -> dict[str, int]:
        """LV name -> size in bytes, for the LVs of this volume group."""
        out = self.run(
            ["lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", self.vg]
        )
        sizes = {}
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                sizes[fields[0]] = int(fields[1])
        return sizes

    def ensure(
        self, volume: str, size: int, origin: str | None, image: tuple[str, str] | None
    ) -> bool:
        """Make the volume's LV exist with at least `size` bytes; True if created now."""
        try:
            return self._ensure(volume, size, origin, image)
        except VolumeFileError:
            self._known = None  # a command failed half-way: trust only a fresh `lvs`
            raise

    def _ensure(
        self, volume: str, size: int, origin: str | None, image: tuple[str, str] | None
    ) -> bool:
        name, partial = f"{PREFIX}{volume}", f"{PREFIX}{volume}.partial"
        sizes = self._lvs()
        if name in sizes:
            if sizes[name] < size:
                self.run(["lvextend", "--yes", "-L", f"{size}b", f"{self.vg}/{name}"])
                sizes[name] = size
            return False
        if partial in sizes:
            # Left by a fill that died: start again.
            self.run(["lvremove", "--yes", f"{self.vg}/{partial}"])
            del sizes[partial]
        self.run(
            ["lvcreate", "--yes", "--wipesignatures", "y", "--zero", "y",
             "-n", partial, "-L", f"{size}b", self.vg]
        )  # fmt: skip
        target = Path(f"/dev/{self.vg}/{partial}")
        try:
            self.run(["blkdiscard", "--zeroout", str(target)])
            if origin is not None:
                source = self.path(origin)
                self.run(["dd", f"if={source}", f"of={target}", f"bs={_COPY}", "conv=fsync"])
            elif image is not None:
                self.fill_from_image(image[0], image[1], target)
        except VolumeFileError:
            self.run(["lvremove", "--yes", f"{self.vg}/{partial}"])
            raise
        self.run(["lvrename", self.vg, partial, name])
        sizes[name] = size
        return True

    def remove(self, volume: str) -> str | None:
        name = f"{PREFIX}{volume}"
        sizes = self._lvs()
        if name not in sizes:
            return None
        aside = f"{name}.trash-{int(time.time())}"
        self.run(["lvrename", self.vg, name, aside])
        sizes[aside] = sizes.pop(name)
        return f"/dev/{self.vg}/{aside}"


def _fill_from_image(url: str, sha256: str, device: Path) -> None:
    with open(device, "r+b") as out:
        download_into(url, sha256, out, holes=False)
