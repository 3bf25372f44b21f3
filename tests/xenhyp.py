"""The Xen hypervisor that test guests boot by multiboot, fetched from Debian, never installed.

`apt-get download` fetches xen-hypervisor-4.17-amd64 into var/cache/xenhyp/
($CLOUDCTL_TEST_CACHE/xenhyp/ if set), `dpkg-deb -x` unpacks it and boot/xen-*.gz is gunzipped
once, keyed by package name: multiboot loaders (qemu -kernel, iPXE, mboot.c32) want the ELF.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("CLOUDCTL_TEST_CACHE", REPO_ROOT / "var" / "cache")) / "xenhyp"
PACKAGE = "xen-hypervisor-4.17-amd64"


class XenHypervisorError(Exception):
    """Fetching or unpacking the Xen package failed; the message says what to do."""


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
    with _locked(CACHE_DIR / ".lock"):
        if not (root / ".complete").exists():
            _fetch_and_unpack(package, root)
    found = sorted(root.glob("xen-*"))
    if len(found) != 1:
        raise XenHypervisorError(f"expected one xen-* in {root}, found {found}: delete it, retry")
    return XenHypervisor(package, (root / "version").read_text().strip(), found[0])


def _fetch_and_unpack(package: str, root: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=CACHE_DIR))
    try:
        # apt-get's _apt sandbox user must be able to write the .deb into its working directory.
        work.chmod(0o777)
        download = ["apt-get", "download", "-q", package]
        result = subprocess.run(download, cwd=work, capture_output=True, text=True)
        if result.returncode != 0 and "Unable to locate" in result.stderr:
            _run(["apt-get", "update", "-qq"])
            result = subprocess.run(download, cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            raise XenHypervisorError(f"apt-get download {package} failed:\n{result.stderr}")
        (deb,) = work.glob("*.deb")
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        unpacked = work / "unpacked"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
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


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise XenHypervisorError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
    return result


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Parallel pytest runs share the cache: the first one downloads, the others wait.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
