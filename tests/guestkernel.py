"""The Debian kernel that test guests boot, and tiny busybox initramfs images for it.

The kernel .deb is fetched with `apt-get download` and unpacked (never installed) into
var/cache/guestkernel/ ($CLOUDCTL_TEST_CACHE/guestkernel/ if set), keyed by package name, so
only the first run pays for it; initramfs images are built in memory as newc cpio.
"""

from __future__ import annotations

import fcntl
import gzip
import io
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("CLOUDCTL_TEST_CACHE", REPO_ROOT / "var" / "cache")) / "guestkernel"
META_PACKAGE = "linux-image-amd64"
APT_LISTS = Path("/var/lib/apt/lists")
BUSYBOX = Path("/usr/bin/busybox")

# libcrc32c asks for "crc32c" only as a soft dependency, which modules.dep leaves out; without
# it drbd fails with "Unknown symbol crc32c" (LAB-FACTS). Keys and values are module names.
EXTRA_PREDEPS: dict[str, tuple[str, ...]] = {"libcrc32c": ("crc32c_generic",)}

# Start of most test /init scripts: the kernel gives an initramfs nothing mounted, and the
# generated /bin/load-modules insmods the requested modules in dependency order.
INIT_PREAMBLE = """\
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
/bin/load-modules
"""


class GuestKernelError(Exception):
    """Fetching, unpacking or packing the guest kernel failed; the message says what to do."""


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked kernel: boot `vmlinux` (or `vmlinuz`) with qemu -kernel."""

    version: str
    vmlinuz: Path
    modules_dir: Path
    # The uncompressed ELF kernel, which qemu starts through its PVH entry point: no xz
    # decompression in the guest under TCG (measured qemu CPU to /init: 2.6-3.2 s against
    # 5.9-7.0 s for vmlinuz). Equals vmlinuz if the kernel cannot be booted that way.
    vmlinux: Path

    @property
    def package(self) -> str:
        return f"linux-image-{self.version}"


def guest_kernel(package: str | None = None) -> GuestKernel:
    """The unpacked kernel `package` (default: the one linux-image-amd64 depends on)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with cache_lock(CACHE_DIR / ".lock"):
        package = package or _resolve_package()
        if not package.startswith("linux-image-"):
            raise GuestKernelError(f"{package!r} is not a linux-image-* package")
        version = package.removeprefix("linux-image-")
        root = CACHE_DIR / package
        if not (root / ".complete").exists():
            _fetch_and_unpack(package, version, root)
        vmlinuz = root / "boot" / f"vmlinuz-{version}"
        if not vmlinuz.is_file():
            raise GuestKernelError(f"{vmlinuz} missing: delete {root} and retry")
        vmlinux = root / "boot" / f"vmlinux-{version}"
        if not vmlinux.exists():
            _write_atomically(vmlinux, extract_vmlinux(vmlinuz) or b"")
    return GuestKernel(
        version=version,
        vmlinuz=vmlinuz,
        modules_dir=root / "lib" / "modules" / version,
        vmlinux=vmlinux if vmlinux.stat().st_size else vmlinuz,
    )


def extract_vmlinux(bzimage: Path) -> bytes | None:
    """The ELF kernel inside a bzImage if it is xz/gzip-packed and has a PVH entry, else None."""
    data = bzimage.read_bytes()
    # Boot protocol header: setup_sects at 0x1f1; payload offset/length (relative to the
    # protected-mode code after the setup sectors) at 0x248/0x24c.
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return None
    except (lzma.LZMAError, zlib.error):
        return None
    return elf if _has_pvh_entry(elf) else None


def _has_pvh_entry(elf: bytes) -> bool:
    # qemu boots an ELF kernel only through XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner "Xen").
    if elf[:4] != b"\x7fELF" or elf[4] != 2:  # 64-bit
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == 18:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.rename(path)


def _resolve_package() -> str:
    # apt-cache takes ~0.7 s; its answer changes only when the apt lists do, so remember it.
    memo = CACHE_DIR / "resolved.json"
    lists_mtime = APT_LISTS.stat().st_mtime_ns if APT_LISTS.exists() else 0
    try:
        saved = json.loads(memo.read_text())
        if saved["lists_mtime_ns"] == lists_mtime:
            return str(saved["package"])
    except (OSError, ValueError, KeyError):
        pass
    out = run_or_raise(["apt-cache", "depends", META_PACKAGE]).stdout
    if not re.search(r"Depends:\s*linux-image-", out):
        run_or_raise(["apt-get", "update", "-qq"])
        out = run_or_raise(["apt-cache", "depends", META_PACKAGE]).stdout
    found = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", out, re.MULTILINE)
    if not found:
        raise GuestKernelError(f"apt-cache depends {META_PACKAGE} names no kernel:\n{out}")
    memo.write_text(json.dumps({"lists_mtime_ns": lists_mtime, "package": found[0]}))
    return found[0]


def _fetch_and_unpack(package: str, version: str, root: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=CACHE_DIR))
    try:
        deb = download_deb(package, work)
        unpacked = work / "root"
        run_or_raise(["dpkg-deb", "-x", str(deb), str(unpacked)])
        deb.unlink()
        # The .deb ships no modules.dep: the package's postinst would have made it.
        run_or_raise(["depmod", "-b", str(unpacked), version])
        (unpacked / ".complete").touch()
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def module_load_order(kernel: GuestKernel, modules: list[str]) -> list[Path]:
    """Module files (relative to modules_dir) to insmod, dependencies first, each once."""
    deps = _read_modules_dep(kernel.modules_dir)
    builtin = _read_builtin(kernel.modules_dir)
    by_name = {_module_name(path): path for path in deps}
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        path = by_name.get(name)
        if path is None:
            if name in builtin:
                return
            raise GuestKernelError(f"no module {name!r} in {kernel.package}")
        if path in order or name in visiting:
            return
        visiting.add(name)
        for pre in EXTRA_PREDEPS.get(name, ()):
            visit(pre)
        # modules.dep lists the whole closure; visiting each entry's own deps first keeps the
        # order right even though the line itself is not sorted for insmod.
        for dep in deps[path]:
            visit(_module_name(dep))
        visiting.discard(name)
        order.append(path)

    for module in modules:
        visit(module)
    return order


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def _read_modules_dep(modules_dir: Path) -> dict[Path, list[Path]]:
    deps: dict[Path, list[Path]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[Path(target)] = [Path(dep) for dep in rest.split()]
    return deps


def _read_builtin(modules_dir: Path) -> set[str]:
    builtin = modules_dir / "modules.builtin"
    if not builtin.exists():
        return set()
    return {_module_name(Path(line)) for line in builtin.read_text().split()}


def build_initramfs(
    kernel: GuestKernel,
    init_script: str,
    modules: list[str],
    out: Path,
    extra_files: Mapping[str, Path | bytes] | None = None,
    compress: bool = True,
) -> Path:
    """Write a newc cpio (gzip unless compress=False) with busybox, modules and /init to `out`.

    /init is `init_script` verbatim (start it with INIT_PREAMBLE to mount /proc, /sys, /dev
    and load `modules`); extra_files maps absolute guest paths to host files or contents.
    """
    archive = _Cpio()
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run"):
        archive.directory(directory)
    archive.directory("etc")
    archive.directory("lib/modules")
    archive.directory("var/run")
    # The kernel opens /dev/console for /init's stdio before anything can mount devtmpfs.
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3)
    archive.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _busybox_applets():
        if applet != "bin/busybox":
            archive.symlink(applet, "/bin/busybox")

    lines = ["#!/bin/sh", "# Generated by tests/guestkernel.py: dependencies first."]
    for rel in module_load_order(kernel, modules):
        name = _module_name(rel)
        archive.file(f"lib/modules/{name}.ko", _module_bytes(kernel.modules_dir / rel), 0o644)
        lines.append(f"insmod /lib/modules/{name}.ko || echo 'load-modules: {name} failed'")
    archive.file("bin/load-modules", ("\n".join(lines) + "\n").encode(), 0o755)

    for guest_path, content in (extra_files or {}).items():
        rel = guest_path.lstrip("/")
        archive.parents(rel)
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        mode = 0o644 if isinstance(content, bytes) else Path(content).stat().st_mode & 0o777
        archive.file(rel, data, mode)
    archive.file("init", init_script.encode(), 0o755)

    raw = archive.finish()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw)
    return out


def _module_bytes(path: Path) -> bytes:
    # busybox insmod passes the file to init_module as is; the kernel wants it uncompressed.
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if path.suffix == ".ko":
        return path.read_bytes()
    raise GuestKernelError(f"cannot unpack module {path}: only .ko and .ko.xz are handled")


def _busybox_applets() -> list[str]:
    out = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


class _Cpio:
    """A newc ("070701") archive built in memory, so device nodes need no mknod on the host."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def directory(self, path: str) -> None:
        self.parents(path + "/x")

    def parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            if directory not in self._dirs:
                self._dirs.add(directory)
                self._entry(directory, 0o040755, b"")

    def file(self, path: str, data: bytes, mode: int) -> None:
        self.parents(path)
        self._entry(path, 0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.parents(path)
        self._entry(path, 0o120777, target.encode())

    def char_device(self, path: str, major: int, minor: int) -> None:
        self.parents(path)
        self._entry(path, 0o020600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", ino=0)
        return self._buf.getvalue()

    def _entry(
        self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0), ino: int = -1
    ) -> None:
        if ino < 0:
            ino, self._ino = self._ino, self._ino + 1
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self._write_padded(header + encoded)
        self._write_padded(data)

    def _write_padded(self, chunk: bytes) -> None:
        self._buf.write(chunk)
        self._buf.write(b"\0" * (-self._buf.tell() % 4))


def download_deb(package: str, work: Path, error: type[Exception] = GuestKernelError) -> Path:
    """`apt-get download` PACKAGE into `work` (updating the lists once if they are stale)."""
    # apt-get writes the .deb into its working directory; as root it warns that the _apt
    # sandbox user cannot write there unless the directory is world-accessible.
    work.chmod(0o777)
    download = ["apt-get", "download", "-q", package]
    result = subprocess.run(download, cwd=work, capture_output=True, text=True)
    if result.returncode != 0 and "Unable to locate" in result.stderr:
        run_or_raise(["apt-get", "update", "-qq"], error)
        result = subprocess.run(download, cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise error(f"apt-get download {package} failed:\n{result.stderr}")
    (deb,) = work.glob("*.deb")
    return deb


def run_or_raise(
    argv: list[str], error: type[Exception] = GuestKernelError
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise error(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
    return result


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    # Parallel pytest runs share the cache; the first one downloads, the others wait.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
