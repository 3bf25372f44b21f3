"""Live migration bench: the lab guest moved back and forth between two real libvirtd, by
`cloudctl instance migrate` and by a plain `virsh migrate --live` of the same guest, in one run.

    .venv/bin/python bench/migration.py [--rounds 10]      # as root; ~1-2 minutes

Downtime is the longest gap between ping replies (one echo request every 50 ms from the
segment); "pings lost" counts requests never answered. Not a test: it only prints.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import Daemon, write_config
from tests.guestkernel import guest_kernel
from tests.guestnet import Pinger, pingable_initramfs
from tests.instancelab import boot_guest_as_instances, wait_reachable
from tests.libvirtlab import LibvirtHost, segment
from tests.netlab import Lab

SUBNET = "10.79.0.0/24"
HN = {"hn1": "10.79.0.11", "hn2": "10.79.0.12"}
GUEST_ADDR = "10.79.0.100"


def measured(lab: Lab, ns: str, move) -> tuple[float, float, int]:
    """(seconds, longest gap, pings lost) of one move while pinging."""
    with Pinger(lab, ns, GUEST_ADDR) as pinger:
        pinger.wait_reply(timeout=10)
        begun = time.monotonic()
        move()
        took = time.monotonic() - begun
        pinger.wait_reply(timeout=10)
    stats = pinger.stats()
    return took, stats.longest_gap, stats.lost


def summary(label: str, runs: list[tuple[float, float, int]]) -> str:
    gaps = [gap * 1000 for _, gap, _ in runs]
    return (
        f"{label:<28} {statistics.median(gaps):8.0f} {max(gaps):8.0f} "
        f"{sum(lost for _, _, lost in runs):6d} {sum(t for t, _, _ in runs):8.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="migrations per tool")
    args = parser.parse_args()
    kernel = guest_kernel()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="cc-mig-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        seg = segment(lab, SUBNET)
        hosts = {name: LibvirtHost(lab, seg, name, ip).start() for name, ip in HN.items()}
        initrd = pingable_initramfs(kernel, lab.workdir / "initrd.gz")
        config = write_config(
            workdir,
            subnet=SUBNET,
            hypervisor={"uri": "qemu+tcp://{ip}/system", "flavour": "qemu", "poll_interval": 2},
        )
        daemon = Daemon(workdir, config, netns=seg.ns)
        daemon.start()
        try:
            for i, (name, ip) in enumerate(HN.items()):
                daemon.cli(
                    "node",
                    "add",
                    "--mac",
                    f"52:54:00:79:00:0{i}",
                    "--role",
                    "hnode",
                    "--name",
                    name,
                    "--ip",
                    ip,
                )
            boot_guest_as_instances(daemon, kernel.vmlinux, initrd, f"{GUEST_ADDR}/24")
            wait_reachable(daemon, 2)
            daemon.cli(
                "instance", "start", "g1", "--memory", "128", "--vcpus", "1", "--node", "hn1"
            )
            with Pinger(lab, seg.ns, GUEST_ADDR) as booting:
                booting.wait_reply(timeout=90)

            where = ["hn1"]
            cloudctl_runs, virsh_runs = [], []

            def other() -> str:
                return "hn2" if where[0] == "hn1" else "hn1"

            def by_cloudctl() -> None:
                daemon.cli("instance", "migrate", "g1", "--to", other())
                where[0] = other()

            def by_virsh() -> None:
                source, target = where[0], other()
                # What an operator would type, run where cloudctld runs (on the segment).
                subprocess.run(
                    [
                        "ip",
                        "netns",
                        "exec",
                        seg.ns,
                        "virsh",
                        "-c",
                        hosts[source].uri,
                        "migrate",
                        "--live",
                        "--p2p",
                        "--persistent",
                        "--undefinesource",
                        "--migrateuri",
                        f"tcp://{HN[target]}:49152",
                        "g1",
                        hosts[target].uri,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                where[0] = target

            def settled() -> None:
                # virsh moves the guest behind cloudctld's back and back again; if the
                # reconciler looked in between, it marked g1 lost until its next poll.
                deadline = time.monotonic() + 10
                while daemon.cli_json("instance", "show", "g1")["state"] != "running":
                    if time.monotonic() > deadline:
                        raise SystemExit("g1 never settled back to running")
                    time.sleep(0.2)

            # Each round: cloudctl there, virsh back and there again, cloudctl back: the guest
            # is where the store says whenever cloudctl acts, and the noise of this shared
            # machine falls on both tools alike.
            for _ in range(max(1, args.rounds // 2)):
                settled()
                cloudctl_runs.append(measured(lab, seg.ns, by_cloudctl))
                virsh_runs.append(measured(lab, seg.ns, by_virsh))
                virsh_runs.append(measured(lab, seg.ns, by_virsh))
                settled()
                cloudctl_runs.append(measured(lab, seg.ns, by_cloudctl))
        finally:
            daemon.stop()
    print(f"\nlive migrations of a 128 MiB TCG guest between two libvirtd, {args.rounds} each")
    print(f"{'tool':<28} {'median':>8} {'max':>8} {'lost':>6} {'total':>8}")
    print(f"{'':<28} {'gap ms':>8} {'gap ms':>8} {'pings':>6} {'s':>8}")
    print(summary("cloudctl instance migrate", cloudctl_runs))
    print(summary("virsh migrate --live --p2p", virsh_runs))
    extra = statistics.median(g for _, g, _ in cloudctl_runs) - statistics.median(
        g for _, g, _ in virsh_runs
    )
    print(f"downtime cloudctl - virsh (median): {extra * 1000:+.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
