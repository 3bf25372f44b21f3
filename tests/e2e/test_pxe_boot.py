"""A registered qemu guest (TCG, -boot n) boots a Debian kernel + our test initramfs from cloudctld.

Two paths, cloudctld the only server on the segment: the ROM's iPXE fetches its script, kernel
and initrd over HTTP; and (profile bios_program pxelinux.0) iPXE -> pxelinux.0 -> per-MAC
pxelinux.cfg -> kernel and initrd over TFTP. The initramfs prints a marker and the kernel
command line rendered from the profile, which the test reads on the serial console.
"""

from __future__ import annotations

import pytest

from tests import netlab
from tests.conftest import Daemon, write_config
from tests.guestkernel import INIT_PREAMBLE, build_initramfs, guest_kernel
from tests.qemu import Guest

pytestmark = [*netlab.needs_root, pytest.mark.slow]

MAC = "52:54:00:c1:0d:41"
INIT = INIT_PREAMBLE + (
    'echo "CLOUDCTL-INITRAMFS-RAN cmdline=[$(cat /proc/cmdline)]"\npoweroff -f\n'
)


@pytest.fixture(scope="module")
def boot_files(tmp_path_factory):
    kernel = guest_kernel()
    initrd = build_initramfs(kernel, INIT, [], tmp_path_factory.mktemp("initrd") / "initrd.gz")
    return kernel.vmlinuz, initrd


@pytest.mark.parametrize(
    "bios_program", ["undionly.kpxe", "pxelinux.0"], ids=["ipxe-http", "pxelinux-tftp"]
)
def test_registered_guest_boots_our_initramfs(short_tmp, tmp_path, boot_files, bios_program):
    vmlinuz, initrd = boot_files
    with netlab.Lab() as lab:
        switch = lab.netns("sw")
        lab.bridge(switch, "br0", router_advertisements=True)
        lab.address(switch, "br0", "10.20.0.2/24")
        config = write_config(short_tmp, interface="br0", dhcp=True, boot=True)
        daemon = Daemon(short_tmp, config, netns=switch)
        daemon.start()
        try:
            daemon.cli("image", "import", "test", "--kernel", str(vmlinuz), "--initrd", str(initrd))
            daemon.cli(
                "profile",
                "set",
                "hnode",
                "--image",
                "test",
                "--bios-program",
                bios_program,
                "--cmdline",
                "console=ttyS0 quiet panic=-1 cloudctl.node={name} ip={ip}",
            )
            daemon.cli("node", "add", "--mac", MAC, "--role", "hnode", "--ip", "10.20.0.60")
            guest = Guest(
                lab,
                switch,
                "br0",
                MAC,
                boot="pxe",
                memory=256,
                console_log=tmp_path / "console.log",
            )
            with guest:
                ran = guest.wait_for(r"CLOUDCTL-INITRAMFS-RAN cmdline=\[(.*)\]", timeout=240)
                cmdline = ran.group(1)
                print(
                    f"{bios_program}: our initramfs ran {guest.seen_at(ran):.1f} s after qemu start"
                )
            assert "cloudctl.node=hn1" in cmdline and "ip=10.20.0.60" in cmdline
            stats = daemon.api("GET", "/v1/stats")
            if bios_program == "pxelinux.0":
                assert stats["tftp"]["completed"] >= 4  # pxelinux.0, ldlinux.c32, config, kernel...
            else:
                assert stats["http"]["ok"] >= 3  # script, kernel, initrd
        finally:
            daemon.stop()
