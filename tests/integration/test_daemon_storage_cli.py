"""Volumes, exports and storage maintenance through cloudctl and a real cloudctld.

The test reports for the storage nodes' agents over the API (what `cloudctl storage serve`
does), so maintenance jobs can be followed to the end. DRBD state is reported by the storage
agent itself (StorageAgent, with real /proc/drbd captures from tests/unit/aoe/fixtures).
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from pathlib import Path

import pytest

from cloudctl.aoe.agent import StorageAgent
from cloudctl.aoe.drbdreport import DrbdReader
from cloudctl.cli.client import ApiClient, CliError

FIXTURES = Path(__file__).parents[1] / "unit" / "aoe" / "fixtures"


def _nodes(daemon):
    for i, (role, name) in enumerate(
        [("snode", "sn1"), ("snode", "sn2"), ("snode", "sn3"), ("hnode", "hn1")]
    ):
        daemon.cli(
            "node", "add", "--mac", f"52:54:00:aa:01:{i:02x}", "--role", role, "--name", name
        )


def test_volumes_get_unique_exports_and_acls(daemon):
    _nodes(daemon)
    a = daemon.cli_json("volume", "create", "root-hn1", "--size", "4G")
    assert a["size"] == 4 << 30 and a["mirrored"] is True
    assert [leg["snode"] for leg in a["legs"]] == ["sn1", "sn2"]  # least used first
    b = daemon.cli_json("volume", "create", "data", "--size", "1G", "--mirror", "sn2,sn3")
    c = daemon.cli_json("volume", "create", "scratch", "--size", "100M", "--on", "sn1")
    devices = [leg["device"] for v in (a, b, c) for leg in v["legs"]]
    assert len(set(devices)) == len(devices) == 5
    assert [leg["device"] for leg in a["legs"]] == ["e1.0", "e2.0"]
    assert c["legs"][0]["device"] == "e1.1"  # sn1's shelf, next slot
    daemon.cli("volume", "assign", "root-hn1", "hn1", "--reason", "boot disk")
    exports = daemon.api("GET", "/v1/storage/sn1/exports")["exports"]
    assert [
        (e["volume"], e["shelf"], e["slot"], e["allowed_macs"], e["exported"]) for e in exports
    ] == [("root-hn1", 1, 0, ["52:54:00:aa:01:03"], True), ("scratch", 1, 1, [], False)]
    grown = daemon.cli_json("volume", "resize", "data", "--size", "2G")
    assert grown["size"] == 2 << 30
    shrink = daemon.cli("volume", "resize", "data", "--size", "1G", check=False)
    assert "only growing is allowed" in shrink.stderr and shrink.returncode == 1
    snap = daemon.cli_json("volume", "snapshot", "data", "data-before-upgrade")
    assert snap["origin"] == "data" and [leg["snode"] for leg in snap["legs"]] == ["sn2", "sn3"]
    busy = daemon.cli("volume", "delete", "root-hn1", check=False)
    assert busy.stderr == "cloudctl: error: volume root-hn1 is assigned to hn1: unassign it first\n"
    busy_node = daemon.cli("node", "remove", "sn1", check=False)
    assert "holds 2 volume legs" in busy_node.stderr
    bad = daemon.cli("volume", "create", "x", "--size", "lots", check=False)
    assert (
        bad.stderr
        == "cloudctl: error: invalid size 'lots': use a number with K, M, G or T, like 4G\n"
    )


def _agent(daemon, snode, stop):
    """Act as sn's storage agent: export exactly what the inventory asks, and report it."""
    while not stop.is_set():
        wanted = daemon.api("GET", f"/v1/storage/{snode}/exports")["exports"]
        devices = [f"e{e['shelf']}.{e['slot']}" for e in wanted if e["exported"]]
        daemon.api("POST", f"/v1/storage/{snode}/report", {"exports": devices})
        time.sleep(0.2)


def test_maintenance_refuses_then_fails_legs_and_finishes(daemon):
    _nodes(daemon)
    daemon.cli("volume", "create", "mirrored", "--size", "1G", "--mirror", "sn1,sn2")
    daemon.cli("volume", "assign", "mirrored", "hn1")
    daemon.cli("volume", "create", "single", "--size", "1G", "--on", "sn1")
    refused = daemon.cli("storage", "maintenance", "start", "sn1", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "cloudctl: error: refusing maintenance of sn1: these volumes have no healthy leg on "
        "another storage node: single\n"
    )
    daemon.cli("volume", "delete", "single")
    stop = threading.Event()
    agent = threading.Thread(target=_agent, args=(daemon, "sn1", stop), daemon=True)
    agent.start()
    try:
        started = daemon.cli("storage", "maintenance", "start", "sn1", "--reason", "disk swap")
        assert started.stdout.splitlines()[-1] == "job 1 succeeded"
        status = daemon.cli_json("storage", "status")
        assert status["in_maintenance"] == ["sn1"]
        assert status["agents"]["sn1"]["exports"] == []
        legs_on_sn1 = daemon.api("GET", "/v1/storage/sn1/exports")["exports"]
        assert [(e["volume"], e["exported"]) for e in legs_on_sn1] == [("mirrored", False)]
        legs = {leg["snode"]: leg["state"] for leg in status["volumes"][0]["legs"]}
        assert legs == {"sn1": "failed", "sn2": "active"}
        # sn2 now holds the only healthy leg: it may not go down too
        second = daemon.cli("storage", "maintenance", "start", "sn2", check=False)
        assert "no healthy leg on another storage node: mirrored" in second.stderr
        text = daemon.cli("storage", "status").stdout
        assert "mirrored" in text and "degraded" in text and "in maintenance: sn1" in text
        finished = daemon.cli("storage", "maintenance", "finish", "sn1")
        assert finished.stdout.splitlines()[-1] == "job 2 succeeded"
        # No mirror agent reports the array: nothing to follow, md resyncs from its bitmap
        # when a node assembles it.
        assert "mirrored: no node reports its array; leg marked active" in finished.stdout
        legs = {
            leg["snode"]: leg["state"]
            for leg in daemon.cli_json("volume", "show", "mirrored")["legs"]
        }
        assert legs == {"sn1": "active", "sn2": "active"}
    finally:
        stop.set()
        agent.join()


def test_maintenance_job_fails_when_no_agent_confirms(daemon):
    _nodes(daemon)
    daemon.cli("volume", "create", "v", "--size", "1G", "--mirror", "sn1,sn2")
    result = daemon.cli("storage", "maintenance", "start", "sn1", "--timeout", "1", check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith(
        "job 1 failed: sn1's storage agent did not confirm within 1 s"
    )
    assert daemon.cli_json("storage", "status")["in_maintenance"] == ["sn1"]


class MirrorAgentStandIn:
    """Plays hn1's mirror agent over the API, with md's answers scripted by the test: a leg
    marked failed is dropped only when `release` is set; a leg coming back resyncs in steps."""

    def __init__(self, daemon, volume: str) -> None:
        self.daemon, self.volume = daemon, volume
        self.members: dict[str, str] = {}
        self.sync: dict | None = None
        self.release = threading.Event()
        self.stop = threading.Event()
        self.resync_steps = [25.0, 50.0, 75.0]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        volumes: list = []
        while not self.stop.is_set():
            for v in volumes:
                for leg in v["legs"]:
                    state = self.members.setdefault(leg["device"], "present")
                    if leg["state"] == "failed" and state == "present" and self.release.is_set():
                        self.members[leg["device"]] = "missing"
                    elif leg["state"] == "resyncing" and state == "missing":
                        self.members[leg["device"]] = "present"
                        self.sync = {"action": "recovery", "percent": 0.0, "finish_s": 9}
            if self.sync is not None:
                if self.resync_steps:
                    self.sync = {**self.sync, "percent": self.resync_steps.pop(0)}
                else:
                    self.sync = None
            degraded = "missing" in self.members.values() or self.sync is not None
            report = {
                "volume": self.volume,
                "array": "md127",
                "members": dict(self.members),
                "degraded": degraded,
                "sync": self.sync,
                "clean": not degraded and bool(self.members),
            }
            answer = self.daemon.api("POST", "/v1/storage/mirrors/hn1", {"arrays": [report]})
            volumes = answer["volumes"]
            time.sleep(0.3)


def test_maintenance_waits_for_mirror_agents_and_follows_the_resync(daemon):
    _nodes(daemon)
    daemon.cli("volume", "create", "m", "--size", "1G", "--mirror", "sn1,sn2")
    daemon.cli("volume", "assign", "m", "hn1")
    stop = threading.Event()
    agents = [
        threading.Thread(target=_agent, args=(daemon, sn, stop), daemon=True)
        for sn in ("sn1", "sn2")
    ]
    hn1 = MirrorAgentStandIn(daemon, "m")
    for thread in [*agents, hn1.thread]:
        thread.start()
    try:
        while "e2.0" not in hn1.members:
            time.sleep(0.1)
        started = daemon.cli("storage", "maintenance", "start", "sn2", "--no-wait")
        job_id = int(started.stdout.split()[1])
        time.sleep(1.5)
        # hn1's array still holds sn2's leg: sn2 keeps exporting it, the job waits.
        assert daemon.api("GET", f"/v1/jobs/{job_id}")["state"] == "running"
        exports = daemon.api("GET", "/v1/storage/sn2/exports")
        assert exports["in_maintenance"] and exports["exports"][0]["exported"] is True
        hn1.release.set()
        watched = daemon.cli("job", "watch", str(job_id))
        assert "waiting for nodes' mirror agents to drop m (e2.0)" in watched.stdout
        assert watched.stdout.rstrip().endswith("succeeded")
        assert daemon.api("GET", "/v1/storage/sn2/exports")["exports"][0]["exported"] is False
        finished = daemon.cli("storage", "maintenance", "finish", "sn2")
        assert re.search(r"m: recovery \[[#.]{20}\] \d+\.\d% on hn1", finished.stdout)
        assert "every mirror with a leg on it is clean" in finished.stdout
        legs = {
            leg["snode"]: leg["state"] for leg in daemon.cli_json("volume", "show", "m")["legs"]
        }
        assert legs == {"sn1": "active", "sn2": "active"}
        assert "hn1: clean" in daemon.cli("storage", "status").stdout
    finally:
        stop.set()
        hn1.stop.set()
        for thread in [*agents, hn1.thread]:
            thread.join(timeout=5)


def _drbd_agent(daemon, snode: str, directory: Path, proc: str | None, names: dict[str, int]):
    """`storage serve`'s agent for `snode` (exports applied nowhere) reading a captured
    /proc/drbd, with udev's by-res links for `names` (resource -> minor)."""
    directory.mkdir()
    proc_path = directory / "proc-drbd"
    if proc is not None:
        proc_path.write_text((FIXTURES / proc).read_text())
    for resource, minor in names.items():
        (directory / "by-res" / resource).mkdir(parents=True)
        (directory / "by-res" / resource / "0").symlink_to(f"../../../drbd{minor}")

    def no_drbdadm() -> str:
        raise AssertionError("DRBD 8.4: drbdadm status must not run")

    client = ApiClient(str(daemon.socket))

    async def apply(plans) -> None:
        pass

    agent = StorageAgent(
        directory / "legs",
        lambda: client.request("GET", f"/v1/storage/{snode}/exports"),
        lambda body: client.request("POST", f"/v1/storage/{snode}/report", body),
        apply,
        read_drbd=DrbdReader(proc_path, directory / "by-res", no_drbdadm),
    )
    assert asyncio.run(agent.sync_once())
    client.close()


def test_storage_status_shows_drbd_state_reported_by_storage_agents(daemon, tmp_path):
    _nodes(daemon)
    daemon.cli("volume", "create", "vol1", "--size", "10M", "--mirror", "sn1,sn2")
    daemon.cli("node", "add", "--mac", "52:54:00:aa:01:10", "--role", "snode", "--name", "sn4")
    # vol1's resource in the middle of its initial sync, seen from both ends; sn3 runs a
    # resource that is no cloudctl volume; sn4 has no DRBD.
    _drbd_agent(daemon, "sn1", tmp_path / "sn1", "drbd-proc-syncsource.txt", {"vol1": 0})
    _drbd_agent(daemon, "sn2", tmp_path / "sn2", "drbd-proc-synctarget.txt", {"vol1": 0})
    _drbd_agent(daemon, "sn3", tmp_path / "sn3", "drbd-proc-wfconnection.txt", {"old": 0})
    _drbd_agent(daemon, "sn4", tmp_path / "sn4", None, {})

    status = daemon.api("GET", "/v1/storage")
    assert sorted(status["drbd"]) == ["sn1", "sn2", "sn3"]
    assert sorted(status["agents"]) == ["sn1", "sn2", "sn3", "sn4"]
    (source,) = status["drbd"]["sn1"]["resources"]
    assert source["resource"] == "vol1" and source["minor"] == 0
    assert (source["role"], source["peer_role"], source["replication"]) == (
        "Primary",
        "Secondary",
        "SyncSource",
    )
    assert source["sync"] == {
        "action": "sync",
        "percent": 25.0,
        "done_kib": 4120,
        "total_kib": 32728,
        "out_of_sync_kib": 28608,
        "finish_s": 6,
        "speed_kib_s": 4120,
    }
    assert daemon.cli_json("storage", "status")["drbd"] == status["drbd"]

    text = daemon.cli("storage", "status").stdout
    bar = "[#####...............]"
    (vol1,) = [line for line in text.splitlines() if line.startswith("vol1 ")]
    assert vol1.endswith(
        f"sn1: Primary/UpToDate -> sn2 Secondary/Inconsistent SyncSource {bar} 25%; "
        f"sn2: Secondary/Inconsistent -> sn1 Primary/UpToDate SyncTarget {bar} 25%"
    )
    assert (
        "drbd old on sn3 (no such volume): Primary/UpToDate -> peer Connecting, "
        "2.0 MiB out of sync\n"
    ) in text
    assert re.search(r"^drbd sn1: 1 device, reported \d{4}-", text, re.MULTILINE)


def test_storage_report_checks_and_keeps_drbd_state(daemon):
    _nodes(daemon)
    status_before = daemon.api("GET", "/v1/storage")
    assert status_before["drbd"] == {}
    device = {
        "resource": "vol1",
        "connection": "Connected",
        "replication": "Established",
        "role": "Primary",
        "peer_role": "Secondary",
        "disk": "UpToDate",
        "peer_disk": "UpToDate",
    }
    answer = daemon.api("POST", "/v1/storage/sn1/report", {"exports": [], "drbd": [device]})
    assert answer["snode"] == "sn1"
    (kept,) = daemon.api("GET", "/v1/storage")["drbd"]["sn1"]["resources"]
    assert kept["in_sync"] is True and kept["minor"] is None and kept["sync"] is None

    for bad, message in (
        ({**device, "sync": {"action": "sync", "percent": 101}}, "drbd[0].sync.percent must be"),
        ({**device, "role": 7}, "drbd[0].role must be a word of printable characters"),
        ({k: v for k, v in device.items() if k != "disk"}, "drbd[0]: missing disk"),
    ):
        with pytest.raises(CliError, match=re.escape(message)):
            daemon.api("POST", "/v1/storage/sn1/report", {"exports": [], "drbd": [bad]})
    with pytest.raises(CliError, match="drbd must be a list of resource objects"):
        daemon.api("POST", "/v1/storage/sn1/report", {"exports": [], "drbd": "vol1"})

    # An agent without DRBD reporting (or whose reading failed) leaves the last state.
    daemon.api("POST", "/v1/storage/sn1/report", {"exports": ["e1.0"]})
    status = daemon.api("GET", "/v1/storage")
    assert status["agents"]["sn1"]["exports"] == ["e1.0"]
    assert status["drbd"]["sn1"]["resources"] == [kept]
    # null: DRBD is gone from that node.
    daemon.api("POST", "/v1/storage/sn1/report", {"exports": [], "drbd": None})
    assert daemon.api("GET", "/v1/storage")["drbd"] == {}
