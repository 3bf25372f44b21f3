"""A registered qemu guest (TCG, -boot n) boots Xen 4.17 by network from cloudctld, as multiboot.

cloudctld is the only server on the segment. The hnode profile's image carries a hypervisor,
so render.py hands the ROM's iPXE a script that loads Xen with `kernel` and the Debian kernel
and our initramfs as `module` lines over HTTP, or (profile bios_program pxelinux.0) a pxelinux
config that runs mboot.c32 with the same three files over TFTP. Xen starts the kernel as a PV
dom0, whose initramfs prints a marker and its command line on hvc0 (Xen's console, which Xen
copies to com1, the serial port the test reads) and powers off, which powers off Xen.
"""

from __future__ import annotations

import re

import pytest

from tests import netlab
from tests.conftest import Daemon, write_config
from tests.guestkernel import INIT_PREAMBLE, build_initramfs, guest_kernel
from tests.qemu import Guest, wrapped
from tests.xenhyp import xen_hypervisor

pytestmark = [*netlab.needs_root, pytest.mark.slow]

MAC = "52:54:00:c1:0d:51"
MARKER = "CLOUDCTL-DOM0-RAN"
INIT = INIT_PREAMBLE + (
    f'echo "{MARKER} hypervisor=[$(cat /sys/hypervisor/type)] cmdline=[$(cat /proc/cmdline)]"\n'
    "poweroff -f\n"
)
# Xen logs to the serial port qemu writes to the console log; dom0 gets half the guest.
HYPERVISOR_ARGS = "console=com1 com1=115200 dom0_mem=512M,max:512M dom0_max_vcpus=1"
# Xen keeps com1 for itself: dom0's console is hvc0, which Xen forwards to com1. Measured: with
# console=ttyS0 or no console= at all dom0 ran and powered off, but /init's output never showed.
DOM0_CMDLINE = "console=hvc0 quiet panic=-1 cloudctl.node={name} ip={ip}"
# LAB-FACTS: the PV dom0 needs svm+npt here (`-cpu max` crashes it).
QEMU_CPU = ("-cpu", "qemu64,+svm,+npt")
PARTS = ("hypervisor", "kernel", "initrd")  # in the order the loader must fetch them


@pytest.fixture(scope="module")
def boot_files(tmp_path_factory):
    kernel = guest_kernel()
    initrd = build_initramfs(kernel, INIT, [], tmp_path_factory.mktemp("initrd") / "initrd.gz")
    return {"hypervisor": xen_hypervisor().path, "kernel": kernel.vmlinuz, "initrd": initrd}


@pytest.mark.parametrize(
    "bios_program", ["undionly.kpxe", "pxelinux.0"], ids=["ipxe-http", "pxelinux-mboot-tftp"]
)
def test_registered_guest_boots_xen_with_our_dom0(short_tmp, tmp_path, boot_files, bios_program):
    with netlab.Lab() as lab:
        switch = lab.netns("sw")
        lab.bridge(switch, "br0", router_advertisements=True)
        lab.address(switch, "br0", "10.20.0.2/24")
        config = write_config(short_tmp, interface="br0", dhcp=True, boot=True)
        daemon = Daemon(short_tmp, config, netns=switch)
        daemon.start()
        try:
            files = [f"--{part}={boot_files[part]}" for part in PARTS]
            daemon.cli("image", "import", "xen", *files)
            daemon.cli(
                "profile", "set", "hnode", "--image", "xen", "--bios-program", bios_program,
                "--hypervisor-args", HYPERVISOR_ARGS, "--cmdline", DOM0_CMDLINE,
            )  # fmt: skip
            daemon.cli("node", "add", "--mac", MAC, "--role", "hnode", "--ip", "10.20.0.61")
            guest = Guest(
                lab,
                switch,
                "br0",
                MAC,
                boot="pxe",
                memory=1024,
                console_log=tmp_path / "console.log",
                extra_args=QEMU_CPU,
            )
            with guest:
                steps = {"iPXE lease": guest.wait_for(wrapped(f"Configuring (net0 {MAC})... ok"))}
                for part in PARTS:
                    # Printed as each load starts. Not the "ok" after it: the firmware's serial
                    # mirror has lost the last one's "k" when Xen took over com1 (1 run in 3).
                    loading = wrapped(f"images/xen/{part}...")
                    steps[f"{part} requested"] = guest.wait_for(loading, timeout=60)
                banner = guest.wait_for(r"\(XEN\) Xen version (4\.17\S*)", timeout=30)
                steps["Xen banner"] = banner
                xen_cmdline = guest.wait_for(r"\(XEN\) Command line: (.*)", timeout=30)
                steps["dom0 started"] = guest.wait_for(r"\(XEN\) Freed \d+kB init memory", 90)
                ran = guest.wait_for(MARKER + r" hypervisor=\[(.*?)\] cmdline=\[(.*)\]", timeout=90)
                steps["dom0 /init"] = ran
                steps["Xen ACPI S5"] = guest.wait_for(r"\(XEN\) Entering ACPI S5 state", 30)
                status = guest.wait_exit(timeout=30)
                timings = ", ".join(f"{k} {guest.seen_at(m):.1f}" for k, m in steps.items())
                print(f"\n{bios_program}: Xen {banner.group(1)}; s after qemu start: {timings}")
            assert status == 0  # dom0's poweroff powered the machine off through Xen
            assert xen_cmdline.group(1).strip() == HYPERVISOR_ARGS
            assert ran.group(1) == "xen"
            dom0_cmdline = ran.group(2)
            # The loader puts the file's name or URL first; Xen drops it before dom0 sees it.
            assert dom0_cmdline.startswith("console=hvc0 "), dom0_cmdline
            assert "cloudctl.node=hn1" in dom0_cmdline and "ip=10.20.0.61" in dom0_cmdline

            stats = daemon.api("GET", "/v1/stats")
            log = daemon.log.read_text()
            size = sum(boot_files[part].stat().st_size for part in PARTS)
            if bios_program == "pxelinux.0":
                # pxelinux.0, ldlinux.c32, the per-MAC config, mboot.c32, libcom32.c32, 3 files.
                assert stats["tftp"]["completed"] >= 8, stats["tftp"]
                sent = [
                    re.search(rf"sent 'images/xen/{part}' .* in [\d.]+ s", log) for part in PARTS
                ]
                assert all(sent), log
                print("\n".join(found.group(0) for found in sent if found))
            else:
                assert stats["http"]["ok"] >= 4, stats["http"]  # script, hypervisor, kernel, initrd
                assert stats["http"]["bytes_sent"] >= size, stats["http"]
                sent = [re.search(rf"GET /images/xen/{part} 200 .* ms", log) for part in PARTS]
                assert all(sent), log
                print("\n".join(found.group(0) for found in sent if found))
        finally:
            daemon.stop()
