"""LvmVolumes against real LVM. This machine's kernel has no device-mapper, so the commands run
in a qemu guest (Debian kernel with dm-mod, Debian's lvm2 binaries) on a virtio disk that is
the volume group, through the guest's command agent: the same argv a storage node runs."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from cloudctl.aoe.lvm import LvmError, LvmVolumes
from tests import netlab
from tests.e2e.test_aoe_guest import AGENT, GuestAgent, guest_md5, with_shared_libraries
from tests.guestkernel import INIT_PREAMBLE, build_initramfs, guest_kernel
from tests.netlab import Lab
from tests.qemu import NIC_MODULES, Guest

pytestmark = [*netlab.needs_root, pytest.mark.slow]

LVM = Path("/usr/sbin/lvm")
BLKDISCARD = Path("/usr/sbin/blkdiscard")
COMMANDS = "lvs vgs pvcreate vgcreate lvcreate lvextend lvremove lvrename"
INIT = (
    INIT_PREAMBLE
    + f"""\
for c in {COMMANDS}; do ln -s lvm /usr/sbin/$c; done
mkdir -p /run/lvm /etc/lvm /tmp
# No udev in the guest: libdevmapper makes the /dev nodes itself.
export DM_DISABLE_UDEV=1
echo LVM-GUEST-READY
exec sh /bin/agent
"""
)
MIB = 1 << 20


def test_lvm_legs_are_zeroed_copied_grown_and_put_aside(tmp_path):
    if not LVM.exists():
        pytest.skip("lvm2 missing: install scripts/test-packages.txt")
    started = time.monotonic()
    kernel = guest_kernel()
    extra = {"/bin/agent": AGENT.encode(), **with_shared_libraries((LVM, BLKDISCARD))}
    extra["/opt/util-linux/blkdiscard"] = extra.pop(str(BLKDISCARD))
    modules = [*NIC_MODULES["virtio-net-pci"], "virtio_blk", "dm_mod"]
    initrd = build_initramfs(kernel, INIT, modules, tmp_path / "initrd.gz", extra_files=extra)
    disk = tmp_path / "pv.img"
    # Old data where the LVs will be: a new leg must never show it.
    disk.write_bytes(b"\xaa" * (64 * MIB))
    with Lab() as lab:
        ns = lab.netns("lvm")
        lab.bridge(ns, "br0")
        agent_path = lab.workdir / "agent.sock"
        guest = Guest(
            lab, ns, "br0", "52:54:00:1f:00:01", boot="kernel", kernel=kernel.vmlinux,
            initrd=initrd, append="console=ttyS0 panic=-1 quiet", memory=256,
            extra_args=(
                "-chardev", f"socket,id=agent,path={agent_path},server=on,wait=off",
                "-serial", "chardev:agent",
                "-drive", f"file={disk},if=virtio,format=raw,cache=unsafe",
            ),
        )  # fmt: skip
        with guest:
            agent = GuestAgent(agent_path)
            agent.connect()
            guest.wait_for("LVM-GUEST-READY", timeout=90)
            agent.wait_ready()
            agent.run("pvcreate -q /dev/vda && vgcreate -q ccvg /dev/vda")

            def run(argv) -> str:
                if argv[0] == "blkdiscard":
                    # busybox's sh runs its own applet of that name (no --zeroout) for a bare
                    # name, whatever PATH says: name util-linux's by its path.
                    argv = ["/opt/util-linux/blkdiscard", *argv[1:]]
                output = agent.run(" ".join(shlex.quote(a) for a in argv) + " 2>&1; echo @@rc=$?")
                status = output.rsplit("@@rc=", 1)[1].strip()
                if status != "0":
                    raise LvmError(f"{' '.join(argv)}: {output}")
                return output.rsplit("@@rc=", 1)[0]

            volumes = LvmVolumes("ccvg", run=run)
            volumes.prepare()
            assert volumes.ensure("v1", 8 * MIB, None, None) is True
            assert volumes.path("v1") == Path("/dev/ccvg/cc-v1")
            zeros = guest_md5(agent, "dd if=/dev/zero bs=1M count=8")
            assert guest_md5(agent, "dd if=/dev/ccvg/cc-v1 bs=1M") == zeros  # not 0xaa

            agent.run("dd if=/dev/urandom of=/dev/ccvg/cc-v1 bs=1M count=8 conv=fsync 2>/dev/null")
            written = guest_md5(agent, "dd if=/dev/ccvg/cc-v1 bs=1M")
            assert volumes.ensure("snap", 8 * MIB, "v1", None) is True
            assert guest_md5(agent, "dd if=/dev/ccvg/cc-snap bs=1M") == written

            assert volumes.ensure("v1", 16 * MIB, None, None) is False  # grown, data kept
            sizes = volumes.sizes()
            assert sizes["cc-v1"] == 16 * MIB and sizes["cc-snap"] == 8 * MIB
            assert guest_md5(agent, "dd if=/dev/ccvg/cc-v1 bs=1M count=8") == written

            aside = volumes.remove("snap")
            assert aside is not None and aside.startswith("/dev/ccvg/cc-snap.trash-")
            assert "cc-snap" not in volumes.sizes() and volumes.remove("snap") is None
            with pytest.raises(LvmError, match="lvcreate"):
                volumes.ensure("huge", 1 << 40, None, None)  # more than the group holds
            assert not [name for name in volumes.sizes() if name.startswith("cc-huge")]
            agent.close()
    print(f"\nLVM in the guest: test {time.monotonic() - started:.0f} s")
