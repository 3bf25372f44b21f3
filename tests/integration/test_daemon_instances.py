"""Instances through cloudctl and a real cloudctld whose hardware nodes are libvirt test-driver
instances (one driver file per node): placement explained, lifecycle jobs, bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Daemon, write_config
from tests.unit.xen.test_lifecycle import NODE_XML


@pytest.fixture
def cloud(short_tmp):
    for name, mib in (("hn1", 4096), ("hn2", 2048)):
        (short_tmp / f"{name}.xml").write_text(NODE_XML.format(cpus=4, kib=mib * 1024))
    config = write_config(
        short_tmp,
        hypervisor={
            "uri": f"test://{short_tmp}/{{name}}.xml",
            "flavour": "qemu",
            "poll_interval": 1,
        },
    )
    daemon = Daemon(short_tmp, config)
    daemon.start()
    for i in (1, 2, 3):
        daemon.cli(
            "node", "add", "--mac", f"52:54:00:aa:02:0{i}", "--role", "hnode", "--name", f"hn{i}"
        )
    images = short_tmp / "img"
    images.mkdir()
    for part in ("kernel", "initrd"):
        (images / part).write_bytes(b"unused by the test driver")
    daemon.cli(
        "image",
        "import",
        "guest",
        "--kernel",
        str(images / "kernel"),
        "--initrd",
        str(images / "initrd"),
    )
    daemon.cli("profile", "set", "instance", "--image", "guest")
    _wait_polled(daemon)
    yield daemon
    daemon.stop()


def _wait_polled(daemon):
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        hosts = daemon.api("GET", "/v1/hosts")["hosts"]
        if sum(h["reachable"] for h in hosts) == 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"hosts never polled: {hosts}")


def test_dry_run_explains_every_candidate_and_changes_nothing(cloud):
    out = cloud.cli("instance", "start", "web1", "--memory", "512", "--vcpus", "1", "--dry-run")
    lines = out.stdout.splitlines()
    assert lines[0].startswith("web1: would run on hn1 (chosen: most free memory")
    table = "\n".join(lines[1:])
    assert "hn2" in table and "hn3" in table and "unreachable" in table
    assert cloud.cli_json("instance", "list")["instances"] == []
    # A dry run starts no job: 200 with the explanation, not 202.
    from cloudctl.cli.client import _UnixConnection

    conn = _UnixConnection(str(cloud.socket), 10)
    body = '{"name": "web1", "memory_mib": 512, "vcpus": 1, "dry_run": true}'
    conn.request("POST", "/v1/instances", body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["node"] == "hn1"
    conn.close()
    too_big = cloud.cli(
        "instance", "start", "x", "--memory", "8192", "--vcpus", "1", "--dry-run", check=False
    )
    assert too_big.returncode == 1 and "no node fits" in too_big.stdout
    assert "needs 8192 MiB" in too_big.stdout


def test_start_stop_destroy_through_the_cli(cloud):
    out = cloud.cli(
        "instance", "start", "web1", "--memory", "512", "--vcpus", "2", "--group", "web"
    )
    assert "web1 runs on hn1" in out.stdout and out.stdout.rstrip().endswith("succeeded")
    shown = cloud.cli_json("instance", "show", "web1")
    assert (shown["state"], shown["node"], shown["vcpus"], shown["group"]) == (
        "running",
        "hn1",
        2,
        "web",
    )
    assert shown["mac"].startswith("52:54:00:")
    out = cloud.cli(
        "instance", "start", "web2", "--memory", "512", "--vcpus", "1", "--group", "web"
    )
    assert "web2 runs on hn2" in out.stdout  # hn1 already runs group web
    hosts = {h["node"]: h for h in cloud.api("GET", "/v1/hosts")["hosts"]}
    assert hosts["hn1"]["free_memory_mib"] == 4096 - 512 and hosts["hn1"]["instances"] == ["web1"]
    console = cloud.cli("instance", "console", "web1", "--print")
    assert console.stdout.strip() == f"virsh -c test://{cloud.directory}/hn1.xml console web1"
    cloud.cli("instance", "stop", "web1")
    assert cloud.cli_json("instance", "show", "web1")["state"] == "stopped"
    again = cloud.cli("instance", "start", "web1")
    assert "runs on" in again.stdout
    cloud.cli("instance", "destroy", "web1", "--reason", "done")
    gone = cloud.cli("instance", "show", "web1", check=False)
    assert gone.returncode == 1 and gone.stderr == "cloudctl: error: no instance named 'web1'\n"
    busy = cloud.cli("node", "remove", "hn2", check=False)
    assert "runs instances web2" in busy.stderr


def test_bad_input_is_one_line_and_writes_nothing(cloud):
    cases = [
        (
            ("instance", "start", "Bad_Name", "--memory", "512", "--vcpus", "1"),
            "invalid instance name",
        ),
        (("instance", "start", "a", "--memory", "512"), "give both --memory and --vcpus"),
        (
            ("instance", "start", "a", "--memory", "8", "--vcpus", "1"),
            "memory_mib must be a whole number from 16",
        ),
        (
            ("instance", "start", "a", "--memory", "64", "--vcpus", "1", "--volume", "nope"),
            "no volume named 'nope'",
        ),
        (
            ("instance", "start", "a", "--memory", "64", "--vcpus", "1", "--profile", "x"),
            "unknown profile 'x'",
        ),
        (("instance", "start", "a"), "give --memory and --vcpus to create it"),
        (("instance", "migrate", "ghost"), "no instance named 'ghost'"),
        (
            (
                "instance",
                "start",
                "a",
                "--memory",
                "64",
                "--vcpus",
                "1",
                "--node",
                "hn9",
                "--dry-run",
            ),
            "no node named 'hn9'",
        ),
    ]
    for args, message in cases:
        result = cloud.cli(*args, check=False)
        assert result.returncode != 0, args
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, (
            args,
            result.stderr,
        )
    assert cloud.cli_json("instance", "list")["instances"] == []


def test_drain_moves_nothing_when_migration_is_impossible_and_says_why(cloud):
    cloud.cli("instance", "start", "big", "--memory", "3000", "--vcpus", "1")
    out = cloud.cli("node", "drain", "hn1", check=False)
    assert out.returncode == 1
    assert "nothing was moved" in out.stdout and "big" in out.stdout
    assert cloud.cli_json("instance", "show", "big")["node"] == "hn1"
    assert cloud.cli_json("node", "show", "hn1")["state"] == "drained"
    cloud.cli("node", "undrain", "hn1")


def test_node_segment_is_set_and_cleared_with_one_line_errors(cloud):
    node = cloud.cli_json("node", "segment", "hn1", "rack-a")
    assert node["segment"] == "rack-a"
    assert cloud.cli_json("node", "segment", "hn1", "--clear")["segment"] is None
    bad = cloud.cli("node", "segment", "hn1", "Rack A", check=False)
    assert bad.returncode == 1 and "invalid storage segment 'Rack A'" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    audit = cloud.cli_json("audit", "list", "--target", "hn1")
    assert [e["action"] for e in audit if e["action"] == "node.segment"] == ["node.segment"] * 2
