"""cloudctld's DHCP server against real clients in network namespaces: udhcpc, dhclient, perfdhcp.

Server namespace `srv` (srv0 10.20.0.2/24, plus srv1 on another link) and client namespace `cli`
joined by a veth; each test registers the client's MAC through the real API first.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

from tests import netlab
from tests.conftest import Daemon, write_config

pytestmark = netlab.needs_root

CLIENT_SCRIPT = """#!/bin/sh
# udhcpc/dhclient hook: record what the server handed out; configure the address like a
# real client would, so renewals are unicast from it.
{{ echo "event=$1${{reason:+$reason}}"
  env | grep -E '^(ip|subnet|router|dns|domain|hostname|lease|serverid|new_[a-z_]+)=' ; }} >> {log}
case "$1$reason" in
  bound|renew|BOUND|RENEW|REBOOT) ip addr flush dev "$interface" 2>/dev/null
       ip addr add "${{ip:-$new_ip_address}}/24" dev "$interface" ;;
esac
exit 0
"""


@pytest.fixture
def rig(short_tmp):
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", "10.20.0.2/24")
        other = lab.netns("other")
        lab.veth(srv, "srv1", other, "oth0")
        lab.address(srv, "srv1", "10.30.0.2/24")
        config = write_config(short_tmp, interface="srv0", dhcp=True)
        daemon = Daemon(short_tmp, config, netns=srv)
        daemon.start()
        script = short_tmp / "hook.sh"
        script.write_text(CLIENT_SCRIPT.format(log=short_tmp / "hook.log"))
        script.chmod(0o755)
        rig = Rig(lab, daemon, srv, cli, other, script, short_tmp / "hook.log")
        try:
            yield rig
        finally:
            daemon.stop()


class Rig:
    def __init__(self, lab, daemon, srv, cli, other, script, hook_log):
        self.lab, self.daemon, self.srv, self.cli, self.other = lab, daemon, srv, cli, other
        self.script, self.hook_log = script, hook_log

    def mac(self, ns: str = "", ifname: str = "cli0") -> str:
        out = self.lab.run(ns or self.cli, ["cat", f"/sys/class/net/{ifname}/address"]).stdout
        return out.strip()

    def udhcpc(self, *extra: str, ns: str = "", ifname: str = "cli0", check: bool = True):
        argv = [
            "udhcpc",
            "-i",
            ifname,
            "-f",
            "-q",
            "-n",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            str(self.script),
            *extra,
        ]
        return self.lab.run(ns or self.cli, argv, timeout=30, check=check)

    def spawn_udhcpc(self):
        """A long-running udhcpc, returned once it is bound (for renew/release signals)."""
        argv = ["udhcpc", "-i", "cli0", "-f", "-t", "3", "-T", "1", "-s", str(self.script)]
        proc = self.lab.spawn(self.cli, argv, self.lab.workdir / "udhcpc.log")
        _wait(lambda: self.hook_log.exists() and "event=bound" in self.hook_log.read_text())
        return proc

    def hook_values(self) -> dict[str, str]:
        values = {}
        for line in self.hook_log.read_text().splitlines():
            key, _, value = line.partition("=")
            values[key] = value
        return values

    def stats(self) -> dict:
        return self.daemon.api("GET", "/v1/stats")["dhcp"]


def test_udhcpc_gets_the_registered_fixed_address_and_options(rig):
    node = rig.daemon.api(
        "POST", "/v1/nodes", {"mac": rig.mac(), "role": "hnode", "ip": "10.20.0.42"}
    )
    result = rig.udhcpc()
    assert "lease of 10.20.0.42 obtained from 10.20.0.2" in result.stderr
    got = rig.hook_values()
    assert got["ip"] == "10.20.0.42"
    assert got["subnet"] == "255.255.255.0"
    assert got["router"] == "10.20.0.1"
    assert got["dns"].strip() == "10.20.0.2"
    assert got["domain"] == "cloud.test"
    assert got["hostname"] == node["name"]
    assert got["lease"] == "3600"
    assert got["serverid"] == "10.20.0.2"
    leases = rig.daemon.api("GET", "/v1/leases")["leases"]
    assert [(lease["mac"], lease["ip"]) for lease in leases] == [(rig.mac(), "10.20.0.42")]
    assert leases[0]["expires"] > time.time() + 3000


def test_registration_takes_effect_on_the_next_discover(rig):
    first = rig.udhcpc(check=False)
    assert first.returncode != 0  # unknown MAC: no offer
    assert rig.stats().get("offer", 0) == 0
    assert rig.stats()["ignored"] >= 1
    rig.daemon.api("POST", "/v1/nodes", {"mac": rig.mac(), "role": "hnode"})
    second = rig.udhcpc()
    assert "lease of 10.20.0.3 obtained" in second.stderr


def test_release_ends_the_lease(rig):
    rig.daemon.api("POST", "/v1/nodes", {"mac": rig.mac(), "role": "snode"})
    proc = rig.spawn_udhcpc()
    rig.lab.run(rig.cli, ["kill", "-USR2", str(proc.pid)])  # udhcpc: release the lease now
    _wait(lambda: rig.stats().get("released") == 1)
    lease = rig.daemon.api("GET", "/v1/leases")["leases"][0]
    assert lease["expires"] <= time.time()
    rig.lab.stop(proc)


def test_udhcpc_renewal_is_acked_by_unicast(rig):
    rig.daemon.api("POST", "/v1/nodes", {"mac": rig.mac(), "role": "hnode"})
    proc = rig.spawn_udhcpc()
    acks = rig.stats()["ack"]
    before = rig.daemon.api("GET", "/v1/leases")["leases"][0]["updated_at"]
    rig.lab.run(rig.cli, ["kill", "-USR1", str(proc.pid)])  # udhcpc: renew now
    _wait(lambda: rig.daemon.api("GET", "/v1/leases")["leases"][0]["updated_at"] > before)
    assert rig.stats()["ack"] == acks + 1
    _wait(lambda: "event=renew" in rig.hook_log.read_text())  # udhcpc ran its renew hook
    rig.lab.stop(proc)


def test_dhclient_gets_the_address_and_init_reboot_is_acked(rig):
    rig.daemon.api("POST", "/v1/nodes", {"mac": rig.mac(), "role": "hnode", "ip": "10.20.0.77"})
    leases = rig.lab.workdir / "dhclient.leases"
    argv = [
        "dhclient",
        "-1",
        "-v",
        "-sf",
        str(rig.script),
        "-lf",
        str(leases),
        "-pf",
        str(rig.lab.workdir / "dhclient.pid"),
        "cli0",
    ]
    first = rig.lab.run(rig.cli, argv, timeout=40)
    assert "DHCPACK of 10.20.0.77 from 10.20.0.2" in first.stderr
    assert "new_ip_address=10.20.0.77" in rig.hook_log.read_text()
    assert "new_host_name=hn1" in rig.hook_log.read_text()
    rig.lab.run(
        rig.cli,
        [
            "dhclient",
            "-r",
            "-sf",
            str(rig.script),
            "-lf",
            str(leases),
            "-pf",
            str(rig.lab.workdir / "dhclient.pid"),
            "cli0",
        ],
        timeout=20,
    )
    # With the lease remembered, dhclient starts in INIT-REBOOT: REQUEST without server id.
    second = rig.lab.run(rig.cli, argv, timeout=40)
    assert "DHCPREQUEST for 10.20.0.77" in second.stderr
    assert "DHCPACK of 10.20.0.77 from 10.20.0.2" in second.stderr


def test_discovery_gives_unknown_macs_a_short_lease_then_accept_registers(short_tmp):
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", "10.20.0.2/24")
        daemon = Daemon(
            short_tmp,
            write_config(short_tmp, interface="srv0", dhcp=True, discovery=True),
            netns=srv,
        )
        daemon.start()
        try:
            mac = lab.run(cli, ["cat", "/sys/class/net/cli0/address"]).stdout.strip()
            result = lab.run(
                cli,
                ["udhcpc", "-i", "cli0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s", "/bin/true"],
            )
            assert "lease of 10.20.0.200 obtained" in result.stderr
            assert "lease time 60" in result.stderr
            nodes = daemon.cli_json("node", "list")
            assert [(n["name"], n["mac"], n["state"], n["role"]) for n in nodes] == [
                ("mac-" + mac.replace(":", ""), mac, "discovered", None)
            ]
            accepted = daemon.cli_json(
                "node", "accept", mac, "--role", "hnode", "--reason", "new rack"
            )
            assert (accepted["name"], accepted["ip"], accepted["state"]) == (
                "hn1",
                "10.20.0.3",
                "registered",
            )
            again = lab.run(
                cli,
                ["udhcpc", "-i", "cli0", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s", "/bin/true"],
            )
            assert "lease of 10.20.0.3 obtained" in again.stderr
            assert "lease time 3600" in again.stderr
        finally:
            daemon.stop()


def test_never_answers_on_another_link(rig):
    mac = rig.mac(rig.other, "oth0")
    rig.daemon.api("POST", "/v1/nodes", {"mac": mac, "role": "hnode"})
    result = rig.udhcpc(ns=rig.other, ifname="oth0", check=False)
    assert result.returncode != 0
    assert "obtained" not in result.stderr
    assert rig.stats().get("received", 0) == 0  # SO_BINDTODEVICE: srv1's packets never reach us


def test_perfdhcp_completes_exchanges_through_a_relay(short_tmp):
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", "10.20.0.2/24")
        lab.address(cli, "cli0", "10.20.0.9/24")  # perfdhcp -l relays from this address
        daemon = Daemon(
            short_tmp,
            write_config(short_tmp, interface="srv0", dhcp=True, discovery=True),
            netns=srv,
        )
        daemon.start()
        try:
            result = lab.run(
                cli,
                [
                    "perfdhcp",
                    "-4",
                    "-l",
                    "cli0",
                    "-r",
                    "50",
                    "-R",
                    "40",
                    "-p",
                    "4",
                    "-b",
                    "mac=00:0c:01:00:00:00",
                    "10.20.0.2",
                ],
                timeout=60,
                check=False,
            )
            sent, received = _perfdhcp_counts(result.stdout)
            assert sent[0] >= 100, result.stdout
            assert received[0] >= sent[0] * 0.99  # DISCOVER -> OFFER
            assert received[1] >= sent[1] * 0.99  # REQUEST -> ACK
            stats = daemon.api("GET", "/v1/stats")["dhcp"]
            assert stats["ack"] >= received[1]
        finally:
            daemon.stop()


def test_server_survives_100k_mutated_packets(rig):
    rig.daemon.api("POST", "/v1/nodes", {"mac": rig.mac(), "role": "hnode"})
    rig.lab.address(rig.cli, "cli0", "10.20.0.9/24")
    sender = Path(__file__).with_name("dhcp_fuzz_sender.py")
    out = rig.lab.run(
        rig.cli,
        [sys.executable, str(sender), "10.20.0.2", str(rig.daemon.socket), "100000"],
        timeout=600,
    )
    sent = json.loads(out.stdout)
    assert sent == {"sent": 100_000, "received": 100_000}
    stats = rig.stats()
    assert stats["malformed"] > 10_000
    assert stats.get("internal_error", 0) == 0
    rig.lab.run(rig.cli, ["ip", "addr", "flush", "dev", "cli0"])
    assert "lease of 10.20.0.3 obtained" in rig.udhcpc().stderr  # still serving


def _perfdhcp_counts(output: str) -> tuple[list[int], list[int]]:
    sent = [int(v) for v in re.findall(r"^sent packets: (\d+)", output, re.M)]
    received = [int(v) for v in re.findall(r"^received packets: (\d+)", output, re.M)]
    return sent, received


def _wait(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
