"""DRBD 8.4 replication between two qemu guests (TCG) with cloudctl.aoe.drbd's renderers/parsers.

Each guest boots the Debian kernel (DRBD 8.4.11) from a busybox initramfs carrying drbdsetup-84,
drbdadm-84 and drbdmeta; the test drives both through a shell on a virtio-serial port. What the
guests' /proc/drbd shows also goes through the storage agent's DrbdReader, as `storage serve`
would report it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from cloudctl.aoe.drbd import DRBDSETUP as DRBDSETUP_GUEST
from cloudctl.aoe.drbd import (
    DrbdHost,
    DrbdResource,
    DrbdStatus,
    create_md_command,
    down_command,
    initial_sync_command,
    parse_drbdadm_status,
    parse_proc_drbd,
    render_resource,
    resync_rate_command,
    role_command,
    up_commands,
)
from cloudctl.aoe.drbdreport import DrbdReader, status_to_json
from tests import netlab
from tests.guestkernel import INIT_PREAMBLE, GuestKernel, build_initramfs, guest_kernel
from tests.netlab import Lab
from tests.qemu import Guest

pytestmark = [*netlab.needs_root, pytest.mark.slow]

DRBDSETUP = Path("/usr/lib/drbd/drbdsetup-84")
DRBDADM = Path("/usr/lib/drbd/drbdadm-84")
DRBDMETA = Path("/usr/sbin/drbdmeta")
DRBD_MODULES = ["virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "drbd"]
# Where fixtures for tests/unit/aoe come from when CLOUDCTL_CAPTURE_FIXTURES=1 (see its README).
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "aoe" / "fixtures"

# /init's tail for a driven guest: a shell reading commands from the virtio-serial port named
# cc.shell (GuestShell.qemu_args). A port opens once only, hence one read-write fd for all three.
SHELL_TAIL = """\
echo GUEST-SHELL-READY
port=
while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = cc.shell ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] || sleep 0.1
done
while :; do sh 0<>"$port" 1>&0 2>&0; sleep 0.2; done
"""


def binaries_with_libs(binaries: Mapping[str, Path]) -> dict[str, Path]:
    """extra_files for build_initramfs: binaries at their guest paths plus what ldd lists."""
    files: dict[str, Path] = {}
    for guest_path, host_path in binaries.items():
        files[guest_path] = host_path
        out = subprocess.run(
            ["ldd", str(host_path)], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                files[match[1]] = Path(match[1])
    return files


class GuestShell:
    """A shell in a guest on its second serial port (qemu chardev socket): run() and wait."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._count = 0

    @staticmethod
    def qemu_args(path: Path) -> tuple[str, ...]:
        return (
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=sh0,path={path},server=on,wait=off",
            "-device", "virtserialport,bus=vser0.0,nr=1,chardev=sh0,name=cc.shell",
        )  # fmt: skip

    def connect(self, timeout: float = 10) -> None:
        """Connect to qemu's socket; call right after qemu starts (it drops output before)."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
                self._sock = sock
                return
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the guest's shell answers (qemu holds what we send until the port opens)."""
        self.run("true", timeout=timeout)

    def run(self, command: str, timeout: float = 60, check: bool = True) -> str:
        """Run command in the guest's shell; its stdout+stderr. check: raise unless it exits 0."""
        assert self._sock is not None, "connect() first"
        self._count += 1
        marker = f"__CC_END_{self._count}_"
        # The marker is written by a second command, so command may be anything, even `exit`.
        self._sock.settimeout(timeout)
        self._sock.sendall(f"{command}\necho {marker}$?\n".encode())
        pattern = re.compile(re.escape(marker.encode()) + rb"(\d+)\n")
        deadline = time.monotonic() + timeout
        while not (match := pattern.search(self._buf)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"guest shell: {command!r} not done in {timeout} s:\n{self._buf!r}"
                )
            self._sock.settimeout(remaining)
            with contextlib.suppress(TimeoutError):
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"guest shell closed during {command!r}")
                self._buf += chunk
        output = self._buf[: match.start()].decode(errors="replace")
        self._buf = self._buf[match.end() :]
        status = int(match[1])
        if check and status != 0:
            raise AssertionError(f"guest: {command!r} exited {status}:\n{output}")
        return output

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


SECRET = 'lab "secret" with \\ and spaces'
HOSTS = (
    ("drbd-a", "10.77.0.11", "52:54:00:d7:00:01"),
    ("drbd-b", "10.77.0.12", "52:54:00:d7:00:02"),
)
DISK_MIB = 32
RESOURCE = DrbdResource(
    name="r0",
    hosts=(
        DrbdHost(HOSTS[0][0], HOSTS[0][1], 7789, 0, "/dev/vda"),
        DrbdHost(HOSTS[1][0], HOSTS[1][1], 7789, 0, "/dev/vda"),
    ),
    secret=SECRET,
)


def capture(name: str, text: str) -> None:
    """Keep a real status text as a unit-test fixture when CLOUDCTL_CAPTURE_FIXTURES=1."""
    if os.environ.get("CLOUDCTL_CAPTURE_FIXTURES") == "1":
        (FIXTURES / name).write_text(text)


def sh(argv: list[str]) -> str:
    return shlex.join(argv)


def drbd_initramfs(kernel: GuestKernel, out: Path) -> Path:
    files = binaries_with_libs(
        {"/usr/lib/drbd/drbdsetup-84": DRBDSETUP, "/usr/lib/drbd/drbdadm-84": DRBDADM,
         "/usr/sbin/drbdmeta": DRBDMETA, "/usr/sbin/drbdadm": Path("/usr/sbin/drbdadm")}
    )  # fmt: skip
    files["/etc/drbd.conf"] = b'include "/etc/drbd.d/*.res";\n'
    files["/etc/drbd.d/r0.res"] = render_resource(RESOURCE).encode()
    # drbd-utils 9.22's drbdadm runs drbdadm-84 for an 8.4 kernel, found through PATH; both
    # want the lock and state directories to exist.
    init = INIT_PREAMBLE + "export PATH=/usr/lib/drbd:$PATH\n"
    init += "mkdir -p /var/lib/drbd /var/run/drbd /var/lock\n" + SHELL_TAIL
    return build_initramfs(kernel, init, DRBD_MODULES, out, extra_files=files)


@pytest.fixture(scope="module")
def kernel():
    return guest_kernel()


def wait_proc_drbd(
    shell: GuestShell, until: Callable[[DrbdStatus], bool], timeout: float = 60, what: str = ""
) -> str:
    """Poll /proc/drbd until minor 0, as parse_proc_drbd reads it, satisfies `until`."""
    deadline = time.monotonic() + timeout
    while True:
        text = shell.run("cat /proc/drbd")
        if until(parse_proc_drbd(text).minor(0)):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"/proc/drbd not {what} in {timeout} s:\n{text}")
        time.sleep(0.25)


def reported(text: str, directory: Path) -> dict:
    """The one device `storage serve`'s agent would report for this /proc/drbd text, minor 0
    linked to r0 as udev's rules link it (the guests run no udev)."""
    by_res = directory / "by-res"
    if not by_res.exists():
        (by_res / RESOURCE.name).mkdir(parents=True)
        (by_res / RESOURCE.name / "0").symlink_to("../../../drbd0")
    (directory / "proc-drbd").write_text(text)

    def no_drbdadm() -> str:
        raise AssertionError("DRBD 8.4 lists its devices in /proc/drbd: no drbdadm status")

    (device,) = DrbdReader(directory / "proc-drbd", by_res, no_drbdadm)()
    return status_to_json(device)


def test_two_guests_replicate_through_drbd(kernel, tmp_path):
    started = time.monotonic()
    with Lab() as lab, short_dir("ccdrbd-") as tmp:
        switch = lab.netns("sw")
        lab.bridge(switch, "br0")
        initrd = drbd_initramfs(kernel, tmp_path / "initrd.gz")
        guests, shells = {}, {}
        for name, _, mac in HOSTS:
            disk = tmp_path / f"{name}.img"
            with disk.open("wb") as handle:
                handle.truncate(DISK_MIB << 20)
            shell = GuestShell(tmp / f"{name}.sock")
            extra = ("-drive", f"file={disk},format=raw,if=virtio,cache=unsafe")
            guests[name] = Guest(
                lab, switch, "br0", mac, boot="kernel", kernel=kernel.vmlinux, initrd=initrd,
                memory=256, append="console=ttyS0 panic=-1 quiet",
                console_log=tmp_path / f"{name}.console", tap=f"tap-{name[-1]}",
                extra_args=extra + GuestShell.qemu_args(shell.path),
            )  # fmt: skip
            guests[name].start()
            shell.connect()
            shells[name] = shell
        a, b = (shells[name] for name, _, _ in HOSTS)
        for (name, ip, _), shell in zip(HOSTS, (a, b), strict=True):
            shell.wait_ready(timeout=90)
            assert "load-modules:" not in guests[name].console(), guests[name].console()
            shell.run(f"hostname {name} && ip link set eth0 up && ip addr add {ip}/24 dev eth0")
        booted = time.monotonic() - started

        # drbd-a: cloudctl's own drbdsetup-84 commands (what drbdadm-84 up would run).
        a.run(sh(create_md_command(RESOURCE, "drbd-a", force=True)))
        for argv in up_commands(RESOURCE, "drbd-a"):
            a.run(sh(argv))
        # drbd-b: drbd-utils' own drbdadm (9.22, which hands over to drbdadm-84) reading the
        # rendered resource file.
        print(b.run("drbdadm create-md --force r0"))
        print(b.run("drbdadm -v up r0"))
        text = wait_proc_drbd(a, lambda d: d.connected, what="Connected")
        capture("drbd-proc-connected-inconsistent.txt", text)
        capture("drbd-status-connected-inconsistent.txt", a.run(f"{DRBDSETUP_GUEST} status r0"))
        print(text)

        # Initial full sync from drbd-a, slowed so it can be watched in flight.
        a.run(sh(resync_rate_command(RESOURCE, "drbd-a", 4096)))
        a.run(sh(initial_sync_command(RESOURCE, "drbd-a")))
        text = wait_proc_drbd(
            a, lambda d: d.sync is not None and (d.sync.done_kib or 0) >= 4096, what="syncing"
        )
        capture("drbd-proc-syncsource.txt", text)
        capture(
            "drbd-status-syncsource.txt",
            a.run(f"{DRBDSETUP_GUEST} status r0 --verbose --statistics"),
        )
        capture("drbd-proc-synctarget.txt", b.run("cat /proc/drbd"))
        capture("drbd-status-synctarget.txt", b.run(f"{DRBDSETUP_GUEST} status r0"))
        print(text)
        source = reported(text, tmp_path)
        assert (source["resource"], source["minor"], source["role"]) == ("r0", 0, "Primary")
        assert (source["replication"], source["peer_disk"]) == ("SyncSource", "Inconsistent")
        assert 0 < source["sync"]["percent"] < 100 and source["sync"]["done_kib"] >= 4096
        assert source["in_sync"] is False and source["out_of_sync_kib"] > 0
        a.run(sh(resync_rate_command(RESOURCE, "drbd-a", 512000)))
        wait_proc_drbd(a, lambda d: d.in_sync, what="in sync")

        # Write on drbd-a, read back on drbd-b (a second primary: allow-two-primaries).
        a.run("dd if=/dev/urandom of=/tmp/data bs=1M count=4 2>/dev/null")
        a.run("dd if=/tmp/data of=/dev/drbd0 bs=1M oflag=direct conv=fsync 2>/dev/null")
        written = a.run("md5sum </tmp/data").split()[0]
        b.run(sh(role_command(RESOURCE, "drbd-b", "primary")))
        read = b.run("dd if=/dev/drbd0 bs=1M count=4 iflag=direct 2>/dev/null | md5sum").split()[0]
        proc_a, proc_b = a.run("cat /proc/drbd"), b.run("cat /proc/drbd")
        status_b = b.run(f"{DRBDSETUP_GUEST} status r0 --verbose --statistics")
        capture("drbd-drbdadm-status-dual-primary.txt", b.run("drbdadm status r0"))
        capture("drbd-proc-dual-primary.txt", proc_b)
        capture("drbd-status-dual-primary.txt", status_b)
        print(f"drbd-a /proc/drbd:\n{proc_a}\ndrbd-b /proc/drbd:\n{proc_b}\n{status_b}")
        assert read == written
        for text in (proc_a, proc_b):
            parsed = parse_proc_drbd(text)
            assert parsed.version is not None and parsed.version.startswith("8.4")
            device = parsed.minor(0)
            assert device.connected and device.in_sync, device
            assert (device.role, device.peer_role) == ("Primary", "Primary")
            assert device.protocol == "C" and device.out_of_sync_kib == 0
            both = reported(text, tmp_path)
            assert both["in_sync"] and (both["role"], both["peer_role"]) == ("Primary", "Primary")
            assert both["resource"] == "r0" and both["sync"] is None
        (status,) = parse_drbdadm_status(status_b)
        assert (status.resource, status.role, status.peer_role) == ("r0", "Primary", "Primary")
        assert status.in_sync and status.out_of_sync_kib == 0

        # drbd-b goes away; drbd-a keeps writing, then drbd-b resyncs just what changed.
        b.run(sh(role_command(RESOURCE, "drbd-b", "secondary")))
        b.run(sh(down_command(RESOURCE)))
        text = wait_proc_drbd(a, lambda d: d.connection == "Connecting", what="WFConnection")
        a.run("dd if=/dev/urandom of=/dev/drbd0 bs=1M count=2 seek=8 oflag=direct 2>/dev/null")
        region = "dd if=/dev/drbd0 bs=1M skip=8 count=2 iflag=direct 2>/dev/null | md5sum"
        written = a.run(region).split()[0]
        text = a.run("cat /proc/drbd")
        capture("drbd-proc-wfconnection.txt", text)
        capture("drbd-status-wfconnection.txt", a.run(f"{DRBDSETUP_GUEST} status r0"))
        assert parse_proc_drbd(text).minor(0).out_of_sync_kib == 2048
        waiting = reported(text, tmp_path)
        assert (waiting["connection"], waiting["peer_role"]) == ("Connecting", "Unknown")
        assert waiting["out_of_sync_kib"] == 2048 and not waiting["in_sync"]
        for argv in up_commands(RESOURCE, "drbd-b"):
            b.run(sh(argv))
        text = wait_proc_drbd(a, lambda d: d.in_sync, what="in sync again")
        print(f"drbd-a after drbd-b came back:\n{text}")
        b.run(sh(role_command(RESOURCE, "drbd-b", "primary")))
        assert b.run(region).split()[0] == written
        elapsed = time.monotonic() - started
        print(f"guests ready {booted:.1f} s, whole test {elapsed:.1f} s")
        for shell in shells.values():
            shell.close()
