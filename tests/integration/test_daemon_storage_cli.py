"""Volumes, exports and storage maintenance through cloudctl and a real cloudctld.

The test reports for the storage nodes' agents over the API (what `cloudctl storage serve`
does), so maintenance jobs can be followed to the end.
"""

from __future__ import annotations

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
        legs = {
            leg["snode"]: leg["state"]
            for leg in daemon.cli_json("volume", "show", "mirrored")["legs"]
        }
        assert legs == {"sn1": "resyncing", "sn2": "active"}
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
