"""`cloudctl storage serve` with a real cloudctld: volumes become AoE exports for their nodes.

The storage node's namespace runs the agent + target; the hardware node's namespace probes with
`cloudctl aoe probe`. The agent reaches cloudctld's Unix socket through the shared filesystem.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests import netlab
from tests.conftest import Daemon, write_config

pytestmark = netlab.needs_root


def _probe(lab, ns, daemon) -> dict[str, dict]:
    argv = [
        sys.executable,
        "-m",
        "cloudctl.cli.main",
        "--config",
        str(daemon.config),
        "aoe",
        "probe",
        "hn0",
        "--timeout",
        "1",
        "-o",
        "json",
    ]
    return {t["target"]: t for t in json.loads(lab.run(ns, argv).stdout)}


def _wait(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_volume_exported_to_its_node_only(short_tmp):
    with netlab.Lab() as lab:
        sn, hn = lab.netns("sn"), lab.netns("hn")
        lab.veth(sn, "sn0", hn, "hn0")
        daemon = Daemon(short_tmp, write_config(short_tmp))
        daemon.start()
        volume_dir = short_tmp / "sn1-volumes"
        try:
            hn_mac = lab.run(hn, ["cat", "/sys/class/net/hn0/address"]).stdout.strip()
            daemon.cli(
                "node", "add", "--mac", "52:54:00:aa:02:01", "--role", "snode", "--name", "sn1"
            )
            daemon.cli("node", "add", "--mac", hn_mac, "--role", "hnode", "--name", "hn1")
            daemon.cli("volume", "create", "root-hn1", "--size", "64M", "--on", "sn1")
            agent = lab.spawn(
                sn,
                [
                    sys.executable,
                    "-m",
                    "cloudctl.cli.main",
                    "--config",
                    str(daemon.config),
                    "storage",
                    "serve",
                    "--node",
                    "sn1",
                    "--interface",
                    "sn0",
                    "--volume-dir",
                    str(volume_dir),
                    "--interval",
                    "0.3",
                ],
                lab.workdir / "agent.log",
            )
            _wait(lambda: "sn1" in daemon.api("GET", "/v1/storage")["agents"])
            assert (volume_dir / "root-hn1.img").stat().st_size == 64 << 20
            assert _probe(lab, hn, daemon) == {}  # nobody is assigned: nothing is exported

            daemon.cli("volume", "assign", "root-hn1", "hn1")
            _wait(lambda: daemon.api("GET", "/v1/storage")["agents"]["sn1"]["exports"] == ["e1.0"])
            found = _probe(lab, hn, daemon)
            assert list(found) == ["e1.0"]
            assert found["e1.0"]["size_bytes"] == 64 << 20
            assert found["e1.0"]["config_string"] == "root-hn1"

            daemon.cli("volume", "unassign", "root-hn1", "hn1")
            _wait(lambda: daemon.api("GET", "/v1/storage")["agents"]["sn1"]["exports"] == [])
            assert _probe(lab, hn, daemon) == {}
            assert (volume_dir / "root-hn1.img").exists()  # withdrawn, not deleted
            lab.stop(agent)
        finally:
            daemon.stop()


def test_cloudctld_serves_aoe_itself_on_a_one_machine_setup(short_tmp):
    """storage.serve_node: cloudctld is also the storage node, with no `storage serve`."""
    with netlab.Lab() as lab:
        sn, hn = lab.netns("sn"), lab.netns("hn")
        lab.veth(sn, "sn0", hn, "hn0")
        volume_dir = short_tmp / "volumes"
        config = write_config(
            short_tmp,
            storage={
                "volume_dir": str(volume_dir),
                "serve_node": "sn1",
                "serve_interfaces": ["sn0"],
            },
        )
        daemon = Daemon(short_tmp, config, netns=sn)
        daemon.start()
        try:
            hn_mac = lab.run(hn, ["cat", "/sys/class/net/hn0/address"]).stdout.strip()
            daemon.cli(
                "node", "add", "--mac", "52:54:00:aa:03:01", "--role", "snode", "--name", "sn1"
            )
            daemon.cli("node", "add", "--mac", hn_mac, "--role", "hnode", "--name", "hn1")
            daemon.cli("volume", "create", "root-hn1", "--size", "16M", "--on", "sn1")
            daemon.cli("volume", "assign", "root-hn1", "hn1")
            _wait(
                lambda: (
                    daemon.api("GET", "/v1/storage")["agents"].get("sn1", {}).get("exports")
                    == ["e1.0"]
                )
            )
            found = _probe(lab, hn, daemon)
            assert list(found) == ["e1.0"] and found["e1.0"]["config_string"] == "root-hn1"
            assert (volume_dir / "root-hn1.img").stat().st_size == 16 << 20
        finally:
            daemon.stop()


def test_cloudctld_refuses_to_start_on_a_missing_storage_interface(short_tmp):
    config = write_config(
        short_tmp,
        storage={"serve_node": "sn1", "serve_interfaces": ["nosuch0"]},
    )
    result = subprocess.run(
        [sys.executable, "-m", "cloudctl.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    # (The test config logs at debug level; the error is the one line after the log.)
    assert result.stderr.splitlines()[-1] == (
        "cloudctld: storage.serve_interfaces: cannot serve AoE on 'nosuch0': No such device"
    )


def test_volume_from_an_image_disk_is_filled_over_http_boot(short_tmp, tmp_path):
    """`volume create --from IMAGE`: the storage node (here cloudctld itself) fills each new leg
    from the image's disk, fetched from cloudctld's HTTP boot server and checked."""
    import os
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    with netlab.Lab() as lab:
        sn, hn = lab.netns("sn"), lab.netns("hn")
        lab.veth(sn, "sn0", hn, "hn0")
        lab.address(sn, "sn0", "10.20.0.2/24")
        volume_dir = short_tmp / "volumes"
        config = write_config(
            short_tmp,
            interface="sn0",
            boot=True,
            http_port=http_port,
            storage={
                "volume_dir": str(volume_dir),
                "serve_node": "sn1",
                "serve_interfaces": ["sn0"],
            },
        )
        daemon = Daemon(short_tmp, config, netns=sn)
        daemon.start()
        try:
            files = {name: tmp_path / name for name in ("vmlinuz", "initrd", "root.raw")}
            files["vmlinuz"].write_bytes(b"kernel")
            files["initrd"].write_bytes(b"initrd")
            root = os.urandom(1 << 20) + bytes(3 << 20)
            files["root.raw"].write_bytes(root)
            out = daemon.cli(
                "image", "import", "deb12",
                "--kernel", str(files["vmlinuz"]), "--initrd", str(files["initrd"]),
                "--disk", str(files["root.raw"]),
            )  # fmt: skip
            assert "+ a 4194304-byte disk" in out.stdout
            hn_mac = lab.run(hn, ["cat", "/sys/class/net/hn0/address"]).stdout.strip()
            daemon.cli(
                "node", "add", "--mac", "52:54:00:aa:04:01", "--role", "snode", "--name", "sn1"
            )
            daemon.cli("node", "add", "--mac", hn_mac, "--role", "hnode", "--name", "hn1")
            small = daemon.cli(
                "volume", "create", "tiny", "--size", "1M", "--on", "sn1", "--from", "deb12",
                check=False,
            )  # fmt: skip
            assert small.returncode == 1 and "must be at least that big" in small.stderr
            created = daemon.cli_json(
                "volume", "create", "root-hn1", "--size", "16M", "--on", "sn1", "--from", "deb12"
            )
            assert created["image"] == "deb12"
            daemon.cli("volume", "assign", "root-hn1", "hn1")
            _wait(
                lambda: (
                    daemon.api("GET", "/v1/storage")["agents"].get("sn1", {}).get("exports")
                    == ["e1.0"]
                )
            )
            leg = volume_dir / "root-hn1.img"
            assert leg.stat().st_size == 16 << 20
            with leg.open("rb") as f:
                assert f.read(len(root)) == root and f.read() == bytes((16 << 20) - len(root))
            assert list(_probe(lab, hn, daemon)) == ["e1.0"]
            busy = daemon.cli("image", "remove", "deb12", check=False)
            assert "volumes root-hn1 were created from image deb12" in busy.stderr
        finally:
            daemon.stop()
