"""Storage maintenance under load, with every real piece: cloudctld, two `cloudctl storage serve`
nodes exporting a mirrored volume's legs, a qemu guest (the Linux aoe driver and md RAID1 over
both legs) writing numbered records the whole time, and the mirror agent acting on the guest's
md through its command agent. `storage maintenance start` takes one storage node out and
`finish` brings it back and follows the resync; afterwards both legs hold every record the
guest's writer saw acknowledged.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest

from cloudctl.aoe.mirroragent import MirrorAgent
from tests import netlab
from tests.conftest import Daemon, write_config
from tests.e2e.test_aoe_guest import GUEST_MAC, GuestAgent, aoe_rig

pytestmark = [*netlab.needs_root, pytest.mark.slow]

RECORD = 4096  # one numbered record per 4 KiB block
RECORDS = 6000  # 24 MiB of the 32 MiB volume


class GuestMachine:
    """The mirror agent's view of the guest: /proc/mdstat, /dev/md and mdadm, run through the
    guest's command agent (one command at a time, so every caller takes `lock`)."""

    def __init__(self, agent: GuestAgent) -> None:
        self.agent = agent
        self.lock = threading.Lock()
        self.ran: list[str] = []

    def sh(self, command: str, timeout: float = 60) -> tuple[int, str]:
        with self.lock:
            output = self.agent.run(f"{command} 2>&1; echo @@rc=$?", timeout=timeout, check=False)
        status = re.findall(r"@@rc=(\d+)", output)[-1]
        return int(status), output.split("@@rc=")[0].strip()

    def mdstat(self) -> str:
        return self.sh("cat /proc/mdstat")[1]

    def md_names(self) -> dict[str, str]:
        _, out = self.sh("for l in /dev/md/*; do [ -e $l ] && echo $l $(readlink -f $l); done")
        return {
            Path(link).name: Path(target).name
            for link, target in (line.split() for line in out.splitlines() if line.count(" ") == 1)
        }

    def device_present(self, path: str) -> bool:
        return self.sh(f"[ -b {path} ]")[0] == 0

    def discover(self) -> None:
        self.sh("echo > /dev/etherd/discover")

    def run(self, argv) -> tuple[int, str]:
        self.ran.append(" ".join(argv))
        return self.sh(" ".join(argv))


def _serve(rig, daemon: Daemon, node: str, volume_dir: Path):
    argv = [
        sys.executable, "-m", "cloudctl.cli.main", "--config", str(daemon.config),
        "storage", "serve", "--node", node, "--interface", f"{node}e0",
        "--volume-dir", str(volume_dir), "--interval", "0.3",
    ]  # fmt: skip
    return rig.lab.spawn(rig.nodes[node], argv, rig.lab.workdir / f"serve-{node}.log")


def _records(path: Path, upto: int) -> list[int]:
    """Record numbers that are wrong or missing in a leg file, among 1..upto."""
    bad = []
    with path.open("rb") as leg:
        for i in range(1, upto + 1):
            leg.seek(i * RECORD)
            if leg.read(16) != b"%016d" % i:
                bad.append(i)
    return bad


def test_maintenance_start_and_finish_under_writes_loses_nothing(tmp_path, short_tmp):
    started = time.monotonic()
    with aoe_rig(tmp_path) as rig:
        daemon = Daemon(short_tmp, write_config(short_tmp))
        daemon.start()
        stop = threading.Event()
        mirror_thread = None
        try:
            daemon.cli("node", "add", "--mac", GUEST_MAC, "--role", "hnode", "--name", "hn1")
            for i, node in enumerate(("sn1", "sn2")):
                rig.storage_node(node)
                daemon.cli(
                    "node", "add", "--mac", f"52:54:00:5e:00:0{i}", "--role", "snode",
                    "--name", node,
                )  # fmt: skip
            daemon.cli("volume", "create", "data", "--size", "32M", "--mirror", "sn1,sn2")
            daemon.cli("volume", "assign", "data", "hn1")
            dirs = {node: short_tmp / f"{node}-volumes" for node in ("sn1", "sn2")}
            for node, volume_dir in dirs.items():
                _serve(rig, daemon, node, volume_dir)
            rig.boot(deadsecs=30)
            rig.wait_devices("e1.0", "e2.0")
            guest = GuestMachine(rig.agent)
            status, out = guest.sh(
                "mdadm --create /dev/md/data --level=1 --raid-devices=2 --metadata=1.0 "
                "--bitmap=internal --assume-clean --run /dev/etherd/e1.0 /dev/etherd/e2.0"
            )
            assert status == 0, out
            assert guest.md_names().get("data", "").startswith("md"), guest.sh("ls -l /dev/md")

            def exchange(arrays):
                return daemon.api("POST", "/v1/storage/mirrors/hn1", {"arrays": arrays})["volumes"]

            agent = MirrorAgent(exchange, guest, interval=0.5)

            def mirror_loop() -> None:
                while not stop.is_set():
                    agent.once()
                    time.sleep(0.5)

            mirror_thread = threading.Thread(target=mirror_loop, daemon=True)
            mirror_thread.start()

            # The writer: record i at block i, each one fsynced before it counts as acked.
            guest.sh(
                f"( i=0; while [ $i -lt {RECORDS} ] && [ ! -f /tmp/stop ]; do i=$((i+1)); "
                f"printf '%016d' $i | dd of=/dev/md/data bs=16 seek=$((i*{RECORD // 16})) "
                "conv=notrunc,fsync 2>/dev/null || { echo FAILED $i > /tmp/writer.err; exit 1; }; "
                "echo $i > /tmp/acked; done; echo done > /tmp/writer.end ) >/dev/null 2>&1 &"
            )

            def acked() -> int:
                return int(guest.sh("cat /tmp/acked 2>/dev/null || echo 0")[1].split()[-1])

            while acked() < 20:
                time.sleep(0.2)
            # The agent must have reported the array before the maintenance can rely on it.
            deadline = time.monotonic() + 60
            while not any(
                a["volume"] == "data" and a["clean"]
                for a in daemon.api("GET", "/v1/storage")["mirrors"]
                .get("hn1", {})
                .get("arrays", [])
            ):
                assert time.monotonic() < deadline, "the mirror agent never reported the array"
                time.sleep(0.2)
            out = daemon.cli("storage", "maintenance", "start", "sn2", check=False)
            assert out.returncode == 0, out.stdout + out.stderr
            during = acked()
            assert "waiting for nodes' mirror agents to drop data (e2.0)" in out.stdout
            assert "--fail /dev/etherd/e2.0" in " ".join(guest.ran)
            mdstat = guest.mdstat()
            assert "[2/1] [U_]" in mdstat or "[2/1] [_U]" in mdstat, mdstat
            assert guest.sh("[ -f /tmp/writer.err ]")[0] != 0, guest.sh("cat /tmp/writer.err")
            time.sleep(2)  # writes land on e1.0 alone; sn2's leg falls behind
            assert acked() > during

            out = daemon.cli("storage", "maintenance", "finish", "sn2", check=False)
            assert out.returncode == 0, out.stdout + out.stderr
            assert "every mirror with a leg on it is clean" in out.stdout
            assert "--re-add /dev/etherd/e2.0" in " ".join(guest.ran)
            legs = {
                leg["snode"]: leg["state"]
                for leg in daemon.cli_json("volume", "show", "data")["legs"]
            }
            assert legs == {"sn1": "active", "sn2": "active"}

            guest.sh("touch /tmp/stop")
            for _ in range(100):
                if guest.sh("[ -f /tmp/writer.end ] || [ -f /tmp/writer.err ]")[0] == 0:
                    break
                time.sleep(0.1)
            assert guest.sh("[ -f /tmp/writer.err ]")[0] != 0, guest.sh("cat /tmp/writer.err")
            last = acked()
            stop.set()
            mirror_thread.join(timeout=30)
            assert guest.sh("mdadm --stop /dev/md/data")[0] == 0
            # Metadata 1.0 sits at the end: each leg file holds the data at offset 0.
            for node, volume_dir in dirs.items():
                assert _records(volume_dir / "data.img", last) == [], node
            print(
                f"\n{last} records acked ({during} before maintenance started), none lost on "
                f"either leg; mdadm on the guest: {guest.ran}; "
                f"test {time.monotonic() - started:.0f} s"
            )
        finally:
            stop.set()
            if mirror_thread is not None:
                mirror_thread.join(timeout=30)
            daemon.stop()
