"""The cloudctld side of the instance labs (tests/e2e/test_instances_libvirt.py and
bench/migration.py): the guest's boot image as the instance profile, and waiting until
cloudctld's poller has reached every lab hypervisor."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import Daemon
from tests.guestnet import kernel_append


def boot_guest_as_instances(daemon: Daemon, kernel: Path, initrd: Path, guest_cidr: str) -> None:
    """Import the pingable guest and make it the instance profile (static address)."""
    daemon.cli("image", "import", "guest", "--kernel", str(kernel), "--initrd", str(initrd))
    daemon.cli(
        "profile", "set", "instance", "--image", "guest", "--cmdline", kernel_append(guest_cidr)
    )


def wait_reachable(daemon: Daemon, count: int, timeout: float = 60) -> None:
    """Until cloudctld reports `count` hardware nodes reachable (first libvirt connections)."""
    deadline = time.monotonic() + timeout
    while True:
        hosts = daemon.api("GET", "/v1/hosts")["hosts"]
        if sum(h["reachable"] for h in hosts) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"hardware nodes not reachable after {timeout:.0f} s: {hosts}")
        time.sleep(0.5)
