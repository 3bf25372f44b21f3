"""tests/qemu.py and tests/guestkernel.py with real qemu (TCG): kernel boot and the iPXE ROM."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests import netlab
from tests.guestkernel import BUSYBOX, INIT_PREAMBLE, build_initramfs, guest_kernel
from tests.netlab import Lab
from tests.qemu import NIC_MODULES, Guest, GuestError, wrapped

pytestmark = [*netlab.needs_root, pytest.mark.slow]

ETH_P_IP = 0x0800
DHCP_DISCOVER = 1


@pytest.fixture(scope="module")
def kernel():
    return guest_kernel()


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


@pytest.mark.parametrize(
    ("nic", "image"), [("virtio-net-pci", "vmlinux"), ("e1000", "vmlinuz")], ids=["virtio", "e1000"]
)
def test_direct_kernel_boot_runs_init(lab, kernel, tmp_path, nic, image):
    init = INIT_PREAMBLE + (
        "echo HARNESS-BEGIN\n"
        "ip link\n"
        "cat /proc/cmdline\n"
        "cat /etc/harness.txt\n"
        "echo HARNESS-END\n"
        "poweroff -f\n"
    )
    initrd = build_initramfs(
        kernel,
        init,
        NIC_MODULES[nic],
        tmp_path / "initrd.gz",
        extra_files={"/etc/harness.txt": b"extra file arrived\n"},
    )
    switch = lab.netns("sw")
    lab.bridge(switch, "br0")
    guest = Guest(
        lab,
        switch,
        "br0",
        "52:54:00:c1:0d:01",
        boot="kernel",
        kernel=getattr(kernel, image),
        initrd=initrd,
        append="console=ttyS0 panic=-1 quiet harness=yes",
        nic=nic,
        console_log=tmp_path / "console.log",
    )
    with guest:
        begin = guest.wait_for(r"HARNESS-BEGIN\n", timeout=90)
        end = guest.wait_for(r"HARNESS-END\n", timeout=30)
        output = guest.console()[begin.end() : end.start()]
        print(f"{nic}/{image}: /init ran {guest.seen_at(begin):.1f} s after qemu started")
        assert "load-modules:" not in guest.console()  # every insmod worked
        assert "eth0:" in output
        assert "link/ether 52:54:00:c1:0d:01" in output
        assert "console=ttyS0 panic=-1 quiet harness=yes" in output
        assert "extra file arrived" in output
        assert guest.wait_exit(timeout=30) == 0  # powered off, not panicked
        # Once qemu is gone, waiting for more output fails at once instead of timing out.
        started = time.monotonic()
        with pytest.raises(GuestError, match="exited"):
            guest.wait_for("never printed", timeout=60)
        assert time.monotonic() - started < 5


def dhcp_discover_from(frame: bytes, mac: str) -> dict[int, bytes] | None:
    """The options of a DHCPDISCOVER from mac in an Ethernet frame, else None."""
    ihl = (frame[14] & 0x0F) * 4
    if frame[23] != socket.IPPROTO_UDP:
        return None
    udp = 14 + ihl
    bootp = udp + 8
    if struct.unpack_from("!H", frame, udp + 2)[0] != 67 or frame[bootp] != 1:
        return None
    if frame[bootp + 28 : bootp + 34] != bytes.fromhex(mac.replace(":", "")):
        return None
    options, pos = {}, bootp + 240
    while pos < len(frame) and frame[pos] != 255:
        if frame[pos] == 0:
            pos += 1
            continue
        code, length = frame[pos], frame[pos + 1]
        options[code] = frame[pos + 2 : pos + 2 + length]
        pos += 2 + length
    return options if options.get(53) == bytes([DHCP_DISCOVER]) else None


def test_pxe_rom_starts_dhcp_when_nothing_answers(lab, tmp_path):
    mac = "52:54:00:c1:0d:02"
    switch = lab.netns("sw")
    lab.bridge(switch, "br0", router_advertisements=True)
    capture = lab.open_socket(switch, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    capture.bind(("br0", ETH_P_IP))
    capture.settimeout(0.5)
    guest = Guest(lab, switch, "br0", mac, boot="pxe", console_log=tmp_path / "console.log")
    with guest:
        options = None
        deadline = time.monotonic() + 60
        while options is None and time.monotonic() < deadline:
            try:
                options = dhcp_discover_from(capture.recv(2048), mac)
            except TimeoutError:
                continue
        discover_at = guest.elapsed
        assert options is not None, f"no DHCPDISCOVER from {mac}:\n{guest.console()}"
        assert 175 in options  # iPXE's encapsulated options: this is the ROM, not a kernel

        banner = guest.wait_for(r"iPXE \(http://ipxe\.org\)", timeout=30)
        guest.wait_for(wrapped("Open Source Network Boot Firmware"), timeout=30)
        configuring = guest.wait_for(wrapped(f"Configuring (net0 {mac})"), timeout=30)
        print(
            f"iPXE banner {guest.seen_at(banner):.1f} s, configuring "
            f"{guest.seen_at(configuring):.1f} s, first DHCPDISCOVER {discover_at:.1f} s"
        )
        assert discover_at < 30


def test_router_advertisements_end_ipxe_ipv6_wait(lab, tmp_path):
    """With an RA responder and a DHCP reply carrying 175.176=1 iPXE is configured at once.

    Without the RA it waits ~16 s for IPv6 router discovery after the lease (measured).
    """
    switch = lab.netns("sw")
    lab.bridge(switch, "br0", router_advertisements=True)
    lab.address(switch, "br0", "10.33.0.1/24")
    leases = tmp_path / "udhcpd.leases"
    leases.touch()
    config = tmp_path / "udhcpd.conf"
    config.write_text(
        "start 10.33.0.100\nend 10.33.0.150\ninterface br0\n"
        f"lease_file {leases}\noption subnet 255.255.255.0\n"
        # Encapsulated iPXE option 176 (no-pxedhcp) = 1: skip the ~3 s ProxyDHCP wait.
        "opt 175 b00101\n"
    )
    # -a 0: no ARP probe of an address before offering it (2 s by default).
    lab.spawn(
        switch, [str(BUSYBOX), "udhcpd", "-f", "-a", "0", str(config)], tmp_path / "udhcpd.log"
    )
    guest = Guest(lab, switch, "br0", "52:54:00:c1:0d:03", console_log=tmp_path / "console.log")
    with guest:
        configuring = guest.wait_for(wrapped("Configuring (net0 52:54:00:c1:0d:03)"), timeout=60)
        done = guest.wait_for(r"\.* ok\n", timeout=30)
        guest.wait_for(r"net0: 10\.33\.0\.1\d\d/255\.255\.255\.0", timeout=10)
        took = guest.seen_at(done) - guest.seen_at(configuring)
        print(f"iPXE configured in {took:.2f} s, {guest.seen_at(done):.1f} s after qemu started")
        assert took < 5
