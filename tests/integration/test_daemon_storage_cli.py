"""Volumes, exports and storage maintenance through cloudctl and a real cloudctld.

The test reports for the storage nodes' agents over the API (what `cloudctl storage serve`
does), so maintenance jobs can be followed to the end.
"""

from __future__ import annotations

import re
import threading
import time


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
