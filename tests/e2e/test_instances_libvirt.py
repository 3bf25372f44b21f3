"""cloudctl against two real libvirtd (QEMU driver, TCG) as hardware nodes: `instance start`
places a diskless guest, `instance migrate` moves it live while a pinger runs every 50 ms,
`node drain` empties a node, and a migration that times out or whose destination dies leaves
the guest running, and recorded, on its source."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import netlab
from tests.conftest import Daemon, write_config
from tests.guestkernel import guest_kernel
from tests.guestnet import Pinger, pingable_initramfs
from tests.instancelab import boot_guest_as_instances, wait_reachable
from tests.integration.test_daemon_storage_cli import _agent
from tests.libvirtlab import LIBVIRTD, LibvirtHost, segment
from tests.netlab import Lab

pytestmark = [
    *netlab.needs_root,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(LIBVIRTD).exists(), reason=f"{LIBVIRTD} is not installed"),
]

SUBNET = "10.78.0.0/24"
HN1, HN2 = "10.78.0.11", "10.78.0.12"
GUEST_ADDR = "10.78.0.100"


def _config(directory: Path, **hypervisor) -> Path:
    return write_config(
        directory,
        subnet=SUBNET,
        hypervisor={
            "uri": "qemu+tcp://{ip}/system",
            "flavour": "qemu",
            "bridge": "br0",
            "migration_uri": "tcp://{ip}:49152",
            "poll_interval": 2,
            "connect_timeout": 30,
            **hypervisor,
        },
    )


def _job_until(daemon: Daemon, job_id: int, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = daemon.api("GET", f"/v1/jobs/{job_id}")
        if predicate(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never got there: {job}")


def _where(host: LibvirtHost) -> list[str]:
    conn = host.connect()
    try:
        return [d.name() for d in conn.listAllDomains() if d.isActive()]
    finally:
        conn.close()


def test_start_migrate_drain_and_failed_migrations(short_tmp):
    kernel = guest_kernel()
    with Lab() as lab:
        seg = segment(lab, SUBNET)
        hn1 = LibvirtHost(lab, seg, "hn1", HN1).start()
        hn2 = LibvirtHost(lab, seg, "hn2", HN2).start()
        initrd = pingable_initramfs(kernel, lab.workdir / "initrd.gz")
        daemon = Daemon(short_tmp, _config(short_tmp), netns=seg.ns)
        daemon.start()
        try:
            for i, (name, ip) in enumerate((("hn1", HN1), ("hn2", HN2))):
                daemon.cli(
                    "node",
                    "add",
                    "--mac",
                    f"52:54:00:78:00:0{i}",
                    "--role",
                    "hnode",
                    "--name",
                    name,
                    "--ip",
                    ip,
                )
            boot_guest_as_instances(daemon, kernel.vmlinux, initrd, f"{GUEST_ADDR}/24")
            wait_reachable(daemon, 2)

            out = daemon.cli(
                "instance", "start", "g1", "--memory", "128", "--vcpus", "1", "--node", "hn1"
            )
            assert "g1 runs on hn1" in out.stdout
            assert _where(hn1) == ["g1"] and _where(hn2) == []
            with Pinger(lab, seg.ns, GUEST_ADDR) as booted:
                booted.wait_reply(timeout=90)
            with Pinger(lab, seg.ns, GUEST_ADDR) as pinger:
                pinger.wait_reply(timeout=10)
                begun = time.monotonic()
                out = daemon.cli("instance", "migrate", "g1")  # the scheduler picks hn2
                took = time.monotonic() - begun
                pinger.wait_reply(timeout=10)
            stats = pinger.stats()
            assert "g1 runs on hn2" in out.stdout
            assert daemon.cli_json("instance", "show", "g1")["node"] == "hn2"
            assert _where(hn2) == ["g1"] and _where(hn1) == []
            report = [
                f"cloudctl instance migrate: {took:.1f} s, {stats.sent} pings, "
                f"{stats.lost} lost, longest gap {stats.longest_gap * 1000:.0f} ms"
            ]
            assert stats.longest_gap < 2.0, report

            out = daemon.cli("node", "drain", "hn2")
            assert "g1 runs on hn1" in out.stdout and out.stdout.rstrip().endswith("succeeded")
            assert _where(hn1) == ["g1"] and _where(hn2) == []
            daemon.cli("node", "undrain", "hn2")

            # Slow the copy down (8 MiB/s): the destination dies while memory is on the wire.
            daemon.stop()
            daemon.config = _config(short_tmp, bandwidth_mib=8, migration_timeout=120)
            daemon.start()
            assert daemon.cli_json("instance", "show", "g1")["state"] == "running"
            answer = daemon.api("POST", "/v1/instances/g1/migrate", {"to": "hn2"})
            copying = _job_until(
                daemon,
                answer["id"],
                lambda j: (
                    any("MiB left" in p["line"] for p in j["progress"])
                    or j["state"] not in ("queued", "running")
                ),
            )
            assert copying["state"] == "running", copying  # progress lines came first
            bar = [p["line"] for p in copying["progress"] if "MiB left" in p["line"]][-1]
            assert bar.startswith("[") and "%" in bar and "MiB/s" in bar
            with Pinger(lab, seg.ns, GUEST_ADDR) as pinger:
                hn2.crash()
                job = _job_until(daemon, answer["id"], lambda j: j["state"] != "running")
                pinger.wait_reply(timeout=10)
            assert job["state"] == "failed" and "keeps running on hn1" in job["error"], job
            shown = daemon.cli_json("instance", "show", "g1")
            assert (shown["state"], shown["node"]) == ("running", "hn1")
            assert _where(hn1) == ["g1"]
            report.append(f"destination killed mid-migration: {job['error']}")

            # A migration slower than migration_timeout is aborted; the guest stays.
            hn2.start()
            daemon.stop()
            daemon.config = _config(short_tmp, bandwidth_mib=1, migration_timeout=3)
            daemon.start()
            with Pinger(lab, seg.ns, GUEST_ADDR) as pinger:
                out = daemon.cli("instance", "migrate", "g1", "--to", "hn2", check=False)
                pinger.wait_reply(timeout=10)
            assert out.returncode == 1 and "did not finish within 3 s: aborted" in out.stdout
            assert daemon.cli_json("instance", "show", "g1")["node"] == "hn1"
            assert _where(hn1) == ["g1"] and _where(hn2) == []
            report.append(f"timeout: {pinger.stats().lost} pings lost while aborting")
            print("\n" + "\n".join(report))
            daemon.cli("instance", "destroy", "g1")
            assert _where(hn1) == []
        finally:
            daemon.stop()


@contextlib.contextmanager
def _block_volume(image: Path, name: str):
    """The lab's stand-in for /dev/md/NAME: a loop device over a file, linked from a directory
    of our own under /dev. A block device with cache=none is what libvirt accepts as shared
    storage for live migration (an image file on a local filesystem it refuses as unsafe)."""
    with image.open("wb") as f:
        f.truncate(64 << 20)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    links = Path(f"/dev/cclab-{os.getpid()}")
    try:
        links.mkdir(exist_ok=True)
        (links / name).symlink_to(loop)
        yield links
    finally:
        shutil.rmtree(links, ignore_errors=True)
        subprocess.run(["losetup", "--detach", loop], check=False)


def test_storage_maintenance_migrates_instances_that_would_lose_their_storage(short_tmp):
    """hn1 is cabled to storage segment rack-a only; taking rack-a's sn1 out of service would
    leave its instance without a path to its mirror, so it moves live to hn2 first."""
    kernel = guest_kernel()
    with Lab() as lab, _block_volume(short_tmp / "data.img", "data") as volumes:
        seg = segment(lab, SUBNET)
        hn1 = LibvirtHost(lab, seg, "hn1", HN1).start()
        hn2 = LibvirtHost(lab, seg, "hn2", HN2).start()
        initrd = pingable_initramfs(kernel, lab.workdir / "initrd.gz")
        config = _config(short_tmp, volume_device=f"{volumes}/{{volume}}")
        daemon = Daemon(short_tmp, config, netns=seg.ns)
        daemon.start()
        stop = threading.Event()
        agents = []
        try:
            for i, (role, name, ip, seg_name) in enumerate(
                [
                    ("hnode", "hn1", HN1, "rack-a"),
                    ("hnode", "hn2", HN2, None),
                    ("snode", "sn1", None, "rack-a"),
                    ("snode", "sn2", None, "rack-b"),
                ]
            ):
                args = ["node", "add", "--mac", f"52:54:00:78:01:0{i}", "--role", role]
                args += ["--name", name] + (["--ip", ip] if ip else [])
                args += ["--segment", seg_name] if seg_name else []
                daemon.cli(*args)
            daemon.cli("volume", "create", "data", "--size", "64M", "--mirror", "sn1,sn2")
            for snode in ("sn1", "sn2"):
                agents.append(threading.Thread(target=_agent, args=(daemon, snode, stop)))
                agents[-1].start()
            boot_guest_as_instances(daemon, kernel.vmlinux, initrd, f"{GUEST_ADDR}/24")
            wait_reachable(daemon, 2)
            daemon.cli(
                "instance",
                "start",
                "g1",
                "--memory",
                "128",
                "--vcpus",
                "1",
                "--node",
                "hn1",
                "--volume",
                "data",
            )
            assert _where(hn1) == ["g1"]
            assert daemon.cli_json("volume", "show", "data")["assigned"] == ["hn1"]
            with Pinger(lab, seg.ns, GUEST_ADDR) as booting:
                booting.wait_reply(timeout=90)
            with Pinger(lab, seg.ns, GUEST_ADDR) as pinger:
                pinger.wait_reply(timeout=10)
                out = daemon.cli("storage", "maintenance", "start", "sn1", check=False)
                pinger.wait_reply(timeout=10)
            stats = pinger.stats()
            assert out.returncode == 0, out.stdout + out.stderr
            assert "g1 would lose its last path to its storage: moving it first" in out.stdout
            assert "g1 runs on hn2" in out.stdout and out.stdout.rstrip().endswith("succeeded")
            assert _where(hn2) == ["g1"] and _where(hn1) == []
            assert daemon.cli_json("instance", "show", "g1")["node"] == "hn2"
            assert daemon.cli_json("volume", "show", "data")["assigned"] == ["hn2"]
            status = daemon.api("GET", "/v1/storage")
            assert status["in_maintenance"] == ["sn1"]
            assert stats.longest_gap < 2.0, stats
            print(
                f"\nstorage maintenance moved g1 first: {stats.sent} pings, {stats.lost} lost, "
                f"longest gap {stats.longest_gap * 1000:.0f} ms"
            )
            daemon.cli("storage", "maintenance", "finish", "sn1")
            daemon.cli("instance", "destroy", "g1")
        finally:
            stop.set()
            for agent in agents:
                agent.join(timeout=10)
            daemon.stop()
