"""The Xen hypervisor that test guests boot by multiboot, fetched from Debian, never installed.

`apt-get download` fetches xen-hypervisor-4.17-amd64 into var/cache/xenhyp/
($CLOUDCTL_TEST_CACHE/xenhyp/ if set), `dpkg-deb -x` unpacks it and boot/xen-*.gz is gunzipped
once, keyed by package name: multiboot loaders (qemu -kernel, iPXE, mboot.c32) want the ELF.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tests.guestkernel import cache_lock, download_deb, run_or_raise

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("CLOUDCTL_TEST_CACHE", REPO_ROOT / "var" / "cache")) / "xenhyp"
PACKAGE = "xen-hypervisor-4.17-amd64"


class XenHypervisorError(Exception):
    """Fetching or unpacking the Xen package failed; the message says what to do."""


_run_xen = partial(run_or_raise, error=XenHypervisorError)


@dataclass(frozen=True)
class XenHypervisor:
    """An unpacked Xen: `path` is the gunzipped hypervisor (a 32-bit ELF with multiboot headers)."""

    package: str
    version: str  # the .deb's Version field
    path: Path


def xen_hypervisor(package: str = PACKAGE) -> XenHypervisor:
    """The gunzipped hypervisor of `package`, downloaded and unpacked on first use."""
    if not package.startswith("xen-hypervisor-"):
        raise XenHypervisorError(f"{package!r} is not a xen-hypervisor-* package")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    root = CACHE_DIR / package
    with cache_lock(CACHE_DIR / ".lock"):
        if not (root / ".complete").exists():
            _fetch_and_unpack(package, root)
    found = sorted(root.glob("xen-*"))
    if len(found) != 1:
        raise XenHypervisorError(f"expected one xen-* in {root}, found {found}: delete it, retry")
    return XenHypervisor(package, (root / "version").read_text().strip(), found[0])


def _fetch_and_unpack(package: str, root: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=CACHE_DIR))
    try:
        deb = download_deb(package, work, XenHypervisorError)
        version = _run_xen(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        unpacked = work / "unpacked"
        _run_xen(["dpkg-deb", "-x", str(deb), str(unpacked)])
        compressed = sorted((unpacked / "boot").glob("xen-*.gz"))
        if len(compressed) != 1:
            raise XenHypervisorError(f"{deb.name} has {len(compressed)} boot/xen-*.gz, want 1")
        done = work / "done"
        done.mkdir()
        (done / compressed[0].name.removesuffix(".gz")).write_bytes(
            gzip.decompress(compressed[0].read_bytes())
        )
        (done / "version").write_text(version + "\n")
        (done / ".complete").touch()
        if root.exists():
            shutil.rmtree(root)
        done.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
