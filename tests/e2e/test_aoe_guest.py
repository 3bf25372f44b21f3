"""Our AoE target against the Linux aoe driver in a qemu guest (TCG, direct kernel boot): the
guest sees the exports it may see, reads and writes them, and mirrors two storage nodes with md
RAID1 that survives one node dying mid-write. The guest runs a command agent on ttyS1.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import netlab
from tests.guestkernel import INIT_PREAMBLE, GuestKernel, build_initramfs, guest_kernel
from tests.integration.test_aoe_target import TargetProcess, export
from tests.netlab import Lab
from tests.qemu import NIC_MODULES, Guest

pytestmark = [*netlab.needs_root, pytest.mark.slow]

MDADM = Path("/usr/sbin/mdadm")
GUEST_MAC = "52:54:00:ae:00:01"
OTHER_MAC = "52:54:00:ae:00:99"  # a host that is not the guest: ACLs that exclude the guest
MODULES = [*NIC_MODULES["virtio-net-pci"], "md_mod", "raid1"]

# /init: network up at the MTU from the kernel command line, then aoe (it discovers at load,
# and takes the frame size from the MTU at discovery: LAB-FACTS), then the agent on ttyS1.
INIT = (
    INIT_PREAMBLE
    + """\
mtu=1500; deadsecs=180
for arg in $(cat /proc/cmdline); do
    case $arg in
    aoe.mtu=*) mtu=${arg#aoe.mtu=} ;;
    aoe.deadsecs=*) deadsecs=${arg#aoe.deadsecs=} ;;
    esac
done
ip link set eth0 mtu "$mtu" up
insmod /lib/modules/aoe.ko aoe_deadsecs="$deadsecs" || echo "AOE-INSMOD-FAILED"
mkdir -p /run/mdadm /tmp
echo AOE-GUEST-READY
exec sh /bin/agent
"""
)
# One command per line in, its output then "@@END ID STATUS" out; stdin is /dev/null. The UART
# drops what arrives before the port is open and raw: "@@READY" says the host may send now.
AGENT = """\
exec 3<>/dev/ttyS1
stty raw -echo <&3
echo @@READY >&3
while IFS= read -r line <&3; do
    sh -c "${line#* }" </dev/null >&3 2>&3
    echo "@@END ${line%% *} $?" >&3
done
"""


def with_shared_libraries(binaries: Sequence[Path]) -> dict[str, Path]:
    """Guest path -> host file for each binary and every shared library it loads (ldd)."""
    files: dict[str, Path] = {}
    for binary in binaries:
        files[str(binary)] = binary
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
        for path in re.findall(r"(/\S+) \(0x", out.stdout):
            files[path] = Path(path)  # read through symlinks by build_initramfs
    return files


def aoe_initramfs(
    kernel: GuestKernel,
    out: Path,
    *,
    binaries: Sequence[Path] = (MDADM,),
    compress: bool = True,
) -> Path:
    """A busybox initramfs that boots into the agent with aoe loaded (see INIT)."""
    extra: dict[str, Path | bytes] = {"/bin/agent": AGENT.encode()}
    extra.update(with_shared_libraries(binaries))
    extra["/lib/modules/aoe.ko"] = kernel.modules_dir / "kernel/drivers/block/aoe/aoe.ko"
    return build_initramfs(kernel, INIT, MODULES, out, extra_files=extra, compress=compress)


class AgentError(Exception):
    """A guest command failed or did not finish; the message has its output."""


class GuestAgent:
    """The host end of the guest's ttyS1 (a qemu socket chardev): run a shell command, get its
    output. Commands are single lines; the guest runs them one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.count = 0

    def connect(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.path))
                self.sock = sock
                return
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while b"@@READY\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"no @@READY from the guest agent in {timeout} s")
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.buffer += self.sock.recv(65536)
        self.buffer = self.buffer.split(b"@@READY\n", 1)[1]

    def run(self, command: str, timeout: float = 60, check: bool = True) -> str:
        assert self.sock is not None and "\n" not in command
        self.count += 1
        self.sock.sendall(f"{self.count} {command}\n".encode())
        end = re.compile(rb"@@END %d (\d+)\n" % self.count)
        deadline = time.monotonic() + timeout
        while not (match := end.search(self.buffer)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"{command!r} still running after {timeout} s: {self.buffer!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise AgentError(f"agent closed during {command!r}: {self.buffer!r}")
            self.buffer += chunk
        output = self.buffer[: match.start()].decode(errors="replace")
        self.buffer = self.buffer[match.end() :]
        if check and match.group(1) != b"0":
            raise AgentError(f"{command!r} exited {match.group(1).decode()}:\n{output}")
        return output

    def wait_until(self, command: str, timeout: float = 30, interval: float = 0.2) -> str:
        """Run `command` until it exits 0; returns its output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.run(command, timeout=max(1.0, deadline - time.monotonic()))
            except AgentError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(interval)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class AoeRig:
    """A switch namespace with bridge br0 at `mtu`, storage nodes (each its own namespace, a
    veth port on br0 and a target process) and one guest on a tap of br0."""

    def __init__(self, lab: Lab, kernel: GuestKernel, initrd: Path, mtu: int = 1500) -> None:
        self.lab, self.kernel, self.initrd, self.mtu = lab, kernel, initrd, mtu
        self.switch = lab.netns("san")
        lab.bridge(self.switch, "br0", mtu=mtu)
        self.nodes: dict[str, str] = {}  # name -> namespace
        self.guest: Guest | None = None
        self.agent: GuestAgent | None = None

    def storage_node(self, name: str) -> str:
        ns = self.lab.netns(name)
        self.lab.veth(ns, f"{name}e0", self.switch, f"{name}p0", mtu=self.mtu, bridge_b="br0")
        self.nodes[name] = ns
        return ns

    def target(self, node: str, exports: list[dict], **settings: object) -> TargetProcess:
        interfaces = [f"{node}e0"]
        return TargetProcess(self.lab, self.nodes[node], interfaces, exports, **settings).start()

    def vblade(self, node: str, shelf: int, slot: int, path: Path) -> subprocess.Popen[bytes]:
        argv = ["vblade", str(shelf), str(slot), f"{node}e0", str(path)]
        return self.lab.spawn(self.nodes[node], argv, self.lab.workdir / f"vblade-{node}.log")

    def boot(self, *, deadsecs: int = 180, memory: int = 256, timeout: float = 90) -> float:
        """Start the guest and wait for its agent; returns the seconds that took."""
        agent_path = self.lab.workdir / "agent.sock"
        self.guest = Guest(
            self.lab,
            self.switch,
            "br0",
            GUEST_MAC,
            boot="kernel",
            kernel=self.kernel.vmlinux,
            initrd=self.initrd,
            append=f"console=ttyS0 panic=-1 quiet aoe.mtu={self.mtu} aoe.deadsecs={deadsecs}",
            memory=memory,
            extra_args=(
                "-chardev", f"socket,id=agent,path={agent_path},server=on,wait=off",
                "-serial", "chardev:agent",
            ),
        )  # fmt: skip
        self.guest.start()
        self.agent = GuestAgent(agent_path)
        self.agent.connect()
        ready = self.guest.wait_for(r"AOE-GUEST-READY|AOE-INSMOD-FAILED", timeout=timeout)
        assert ready.group(0) == "AOE-GUEST-READY", self.guest.console()
        self.agent.wait_ready()
        return self.guest.seen_at(ready)

    def wait_devices(self, *names: str, timeout: float = 20) -> float:
        """Wait until the guest has /dev/etherd/NAME for each name with a non-zero size."""
        assert self.agent is not None
        started = time.monotonic()
        checks = " && ".join(
            f"[ -b /dev/etherd/{n} ] && [ $(cat /sys/block/etherd!{n}/size) -gt 0 ]" for n in names
        )
        self.agent.wait_until(f"echo > /dev/etherd/discover; {checks}", timeout=timeout)
        return time.monotonic() - started

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.guest is not None:
            self.guest.stop()


@contextmanager
def aoe_rig(
    tmp_path: Path, *, mtu: int = 1500, binaries: Sequence[Path] = (MDADM,)
) -> Iterator[AoeRig]:
    kernel = guest_kernel()
    initrd = aoe_initramfs(kernel, tmp_path / "initrd.gz", binaries=binaries)
    with Lab() as lab:
        rig = AoeRig(lab, kernel, initrd, mtu)
        try:
            yield rig
        finally:
            rig.close()


def md5(path: Path, length: int | None = None) -> str:
    with path.open("rb") as handle:
        return hashlib.md5(handle.read(length) if length is not None else handle.read()).hexdigest()


def guest_md5(agent: GuestAgent, command: str, timeout: float = 120) -> str:
    output = agent.run(f"{command} 2>/dev/null | md5sum", timeout=timeout)
    return re.findall(r"^([0-9a-f]{32})\s", output, re.MULTILINE)[-1]


@pytest.fixture
def need_tools():
    for tool in ("qemu-system-x86_64", "vblade", "mdadm"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} missing: install scripts/test-packages.txt")


def test_linux_initiator_reads_writes_and_is_kept_out_by_acls(tmp_path, need_tools):
    started = time.monotonic()
    with aoe_rig(tmp_path) as rig:
        rig.storage_node("sn1")
        known = rig.lab.workdir / "known.img"
        known.write_bytes(bytes(range(256)) * (16 << 12))  # 16 MiB
        secret = rig.lab.workdir / "secret.img"
        secret.write_bytes(b"s" * (1 << 20))
        target = rig.target(
            "sn1", [export(1, 1, known), export(1, 2, secret, allowed_macs=[OTHER_MAC])]
        )
        boot = rig.boot()
        found = rig.wait_devices("e1.1")
        agent = rig.agent
        assert agent is not None
        assert agent.run("cat /sys/block/etherd!e1.1/size").strip() == str(32768)

        t = time.monotonic()
        assert guest_md5(agent, "cat /dev/etherd/e1.1") == md5(known)
        read_took = time.monotonic() - t

        agent.run("dd if=/dev/urandom of=/tmp/w bs=1M count=4 2>/dev/null")
        wanted = guest_md5(agent, "cat /tmp/w")
        t = time.monotonic()
        agent.run("dd if=/tmp/w of=/dev/etherd/e1.1 bs=1M seek=8 oflag=direct conv=fsync")
        write_took = time.monotonic() - t
        # The answers came after fdatasync: the host sees the data in the file at once.
        with known.open("rb") as handle:
            handle.seek(8 << 20)
            assert hashlib.md5(handle.read(4 << 20)).hexdigest() == wanted

        # e1.2's ACL names another host: the guest never learns of it, even asking again.
        agent.run("echo > /dev/etherd/discover; sleep 1")
        devices = agent.run("ls /dev/etherd/").split()
        assert "e1.1" in devices and "e1.2" not in devices, devices
        # (The responder counts a broadcast another export answered as handled, not denied.)
        assert target.stats()["errors"] == 0
        print(
            f"\nboot to agent {boot:.1f} s, e1.1 found {found:.1f} s later; md5 of 16 MiB read "
            f"{read_took:.1f} s, 4 MiB O_DIRECT write {write_took:.1f} s; test "
            f"{time.monotonic() - started:.0f} s"
        )


def test_md_raid1_over_two_targets_survives_one_dying_mid_write(tmp_path, need_tools):
    started = time.monotonic()
    size, data_mib = 32 << 20, 20
    with aoe_rig(tmp_path) as rig:
        legs = {}
        for node in ("sn1", "sn2"):
            rig.storage_node(node)
            legs[node] = rig.lab.workdir / f"{node}.img"
            legs[node].write_bytes(bytes(size))
        targets = {
            "sn1": rig.target("sn1", [export(1, 1, legs["sn1"])]),
            "sn2": rig.target("sn2", [export(2, 1, legs["sn2"])]),
        }
        rig.boot(deadsecs=5)  # a dead leg fails after 5 s instead of 3 minutes
        rig.wait_devices("e1.1", "e2.1")
        agent = rig.agent
        assert agent is not None
        agent.run(
            "mdadm --create /dev/md0 --level=1 --raid-devices=2 --metadata=1.0 --assume-clean "
            "--run /dev/etherd/e1.1 /dev/etherd/e2.1"
        )
        array_sectors = int(agent.run("cat /sys/block/md0/size"))
        agent.run(f"dd if=/dev/urandom of=/tmp/data bs=1M count={data_mib} 2>/dev/null")
        wanted = guest_md5(agent, "cat /tmp/data")

        # A writer that reports progress, 1 MiB at a time, in the background.
        agent.run(
            f"( (i=0; while [ $i -lt {data_mib} ]; do "
            "dd if=/tmp/data of=/dev/md0 bs=1M count=1 skip=$i seek=$i oflag=direct"
            " || exit 1; i=$((i+1)); echo $i > /tmp/progress; done); echo $? > /tmp/writer.rc"
            " ) >/tmp/writer.log 2>&1 &",
        )
        agent.wait_until("[ $(cat /tmp/progress 2>/dev/null || echo 0) -ge 3 ]", interval=0.05)
        killed_at = time.monotonic()
        targets["sn2"].proc.send_signal(signal.SIGKILL)  # by pid: storage node 2 dies
        targets["sn2"].proc.wait(timeout=10)
        progress = int(agent.run("cat /tmp/progress"))
        assert progress < data_mib, "the writer finished before the kill: not mid-write"

        agent.wait_until("[ -f /tmp/writer.rc ]", timeout=90, interval=0.5)
        writer_done = time.monotonic() - killed_at
        assert agent.run("cat /tmp/writer.rc").strip() == "0"  # no error reached the writer
        mdstat = agent.run("cat /proc/mdstat")
        assert "[2/1] [U_]" in mdstat and "e2.1[1](F)" in mdstat.replace("etherd!", ""), mdstat
        assert guest_md5(agent, f"dd if=/dev/md0 bs=1M count={data_mib} iflag=direct") == wanted

        # Node 2 comes back on the same port; the leg goes out of the array and back in.
        targets["sn2"] = rig.target("sn2", [export(2, 1, legs["sn2"])])
        agent.run("mdadm /dev/md0 --remove /dev/etherd/e2.1")
        rig.wait_devices("e2.1")
        resync = time.monotonic()
        agent.run(
            "mdadm /dev/md0 --re-add /dev/etherd/e2.1 2>/dev/null || "
            "mdadm /dev/md0 --add /dev/etherd/e2.1"
        )
        agent.wait_until(
            "grep -q '\\[UU\\]' /proc/mdstat && ! grep -q recovery /proc/mdstat", timeout=120
        )
        resync_took = time.monotonic() - resync
        agent.run("mdadm --stop /dev/md0")

        data_bytes = array_sectors * 512
        assert md5(legs["sn1"], data_bytes) == md5(legs["sn2"], data_bytes)
        assert md5(legs["sn1"], data_mib << 20) == wanted
        print(
            f"\nwriter at {progress}/{data_mib} MiB when sn2 died; it finished "
            f"{writer_done:.1f} s later (aoe_deadsecs=5); resync of {array_sectors // 2048} MiB "
            f"{resync_took:.1f} s; test {time.monotonic() - started:.0f} s"
        )
