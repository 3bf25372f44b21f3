"""tests/netlab.py against the real kernel: namespaces, veths, bridges, processes, teardown."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pyroute2 import netns

from tests import netlab
from tests.netlab import Lab, LabError

pytestmark = netlab.needs_root


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


def host_links() -> set[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return {line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()}


def namespace_inodes(lab: Lab) -> set[int]:
    return {(netlab.NETNS_DIR / ns).stat().st_ino for ns in lab.namespaces}


def live_namespace_inodes() -> set[int]:
    # A namespace outlives its /run/netns name while any process is still inside it.
    inodes = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # the process has just exited
                inodes.add((entry / "ns" / "net").stat().st_ino)
    return inodes


def ping(lab: Lab, ns: str, address: str, size: int = 56) -> subprocess.CompletedProcess[str]:
    # -M do: a frame larger than the path MTU fails instead of being fragmented.
    argv = ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(size), address]
    return lab.run(ns, argv, check=False)


def test_veth_joins_two_namespaces_at_mtu_9000(lab):
    a, b = lab.netns("a"), lab.netns("b")
    lab.veth(a, "to-b", b, "to-a", mtu=9000)
    lab.address(a, "to-b", "10.31.0.1/24")
    lab.address(b, "to-a", "10.31.0.2/24")

    assert lab.mtu(a, "to-b") == lab.mtu(b, "to-a") == 9000
    assert ping(lab, a, "10.31.0.2").returncode == 0
    assert ping(lab, a, "10.31.0.2", size=9000 - 28).returncode == 0
    assert ping(lab, a, "10.31.0.2", size=9001 - 28).returncode != 0


def test_bridge_joins_two_namespaces_at_mtu_9000(lab):
    a, b, switch = lab.netns("a"), lab.netns("b"), lab.netns("sw")
    lab.bridge(switch, "br0", mtu=9000)
    lab.veth(a, "eth0", switch, "port-a", mtu=9000, bridge_b="br0")
    lab.veth(b, "eth0", switch, "port-b", mtu=9000, bridge_b="br0")
    lab.address(a, "eth0", "10.32.0.1/24")
    lab.address(b, "eth0", "10.32.0.2/24")

    details = lab.run(switch, ["ip", "-d", "link", "show", "br0"]).stdout
    assert "forward_delay 0 " in details
    assert "stp_state 0 " in details
    assert lab.mtu(switch, "br0") == lab.mtu(a, "eth0") == lab.mtu(b, "eth0") == 9000
    # The first packet must not be lost while the new ports are still coming up.
    started = time.monotonic()
    assert ping(lab, a, "10.32.0.2", size=9000 - 28).returncode == 0
    assert time.monotonic() - started < 0.5


def test_ipv6_addresses_work_at_once(lab):
    a, switch = lab.netns("a"), lab.netns("sw")
    lab.bridge(switch, "br0", ipv6=True)
    lab.address(switch, "br0", "fd00:34::1/64")
    lab.veth(a, "eth0", switch, "port-a", bridge_b="br0")
    lab.address(a, "eth0", "fd00:34::2/64")
    assert ping(lab, a, "fd00:34::1").returncode == 0  # no DAD wait first


def test_bridge_ports_and_bridge_send_no_ipv6_noise(lab):
    a, switch = lab.netns("a"), lab.netns("sw")
    lab.bridge(switch, "br0")
    lab.veth(a, "eth0", switch, "port-a", bridge_b="br0")
    addresses = lab.run(switch, ["ip", "-6", "-o", "addr"]).stdout
    assert "port-a" not in addresses
    assert "br0" not in addresses


def test_run_and_spawn_inside_a_namespace(lab, tmp_path):
    a = lab.netns("a")
    lab.veth(a, "inner0", lab.netns("b"), "inner0")
    result = lab.run(a, ["ip", "-o", "link"])
    assert isinstance(result, subprocess.CompletedProcess)
    assert "inner0" in result.stdout
    assert "inner0" not in host_links()
    with pytest.raises(LabError, match="exited 3"):
        lab.run(a, ["sh", "-c", "echo oops >&2; exit 3"])
    assert lab.run(a, ["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(LabError, match="did not finish"):
        lab.run(a, ["sleep", "5"], timeout=0.2)

    log = tmp_path / "spawned.log"
    proc = lab.spawn(a, ["sh", "-c", "echo started; ip -o link show inner0; exec sleep 60"], log)
    deadline = time.monotonic() + 5
    while "inner0" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.read_text().startswith("started\n")
    assert lab.stop(proc) == -15  # SIGTERM
    assert proc.poll() is not None


# Distinctive names, so a look at the host's links cannot confuse them with its own.
LINK_NAMES = {"tdbr0", "tdport-a", "tdeth0", "tddirect-a", "tddirect-b", "tdtap0"}


def test_teardown_removes_namespaces_links_and_processes():
    with Lab() as lab:
        a, b, switch = lab.netns("a"), lab.netns("b"), lab.netns("sw")
        lab.bridge(switch, "tdbr0", router_advertisements=True)
        lab.veth(a, "tdeth0", switch, "tdport-a", bridge_b="tdbr0")
        lab.veth(a, "tddirect-a", b, "tddirect-b")
        lab.tap(switch, "tdtap0", bridge="tdbr0")
        proc = lab.spawn(b, ["sleep", "60"], None)
        # Something the lab did not spawn itself (a daemon's child) is still in a namespace.
        lab.run(a, ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 < /dev/null &"])
        names = set(lab.namespaces)
        inodes = namespace_inodes(lab)
        workdir = lab.workdir
        assert names <= set(netns.listnetns())
        with_processes = {(netlab.NETNS_DIR / ns).stat().st_ino for ns in (a, b)}
        assert with_processes <= live_namespace_inodes()
    assert not names & set(netns.listnetns())  # `ip netns list`
    assert not LINK_NAMES & host_links()  # `ip link`
    assert not inodes & live_namespace_inodes()
    assert proc.poll() is not None
    assert not workdir.exists()


def test_teardown_after_a_failing_test():
    with pytest.raises(RuntimeError), Lab() as lab:
        a = lab.netns("a")
        lab.veth(a, "tdeth0", lab.netns("b"), "tddirect-b")
        lab.spawn(a, ["sleep", "60"], None)
        names = set(lab.namespaces)
        inodes = namespace_inodes(lab)
        raise RuntimeError("test failed")
    assert not names & set(netns.listnetns())
    assert not LINK_NAMES & host_links()
    assert not inodes & live_namespace_inodes()


def test_leftovers_of_a_dead_run_are_removed():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netlab.PREFIX}-{dead.pid}-beef-a"
    netns.create(stale)
    try:
        with Lab():
            assert stale not in netns.listnetns()
    finally:
        if stale in netns.listnetns():
            netns.remove(stale)


def test_names_are_checked(lab):
    a = lab.netns("a")
    with pytest.raises(LabError, match="longer than 15"):
        lab.veth(a, "a-very-long-name0", lab.netns("b"), "eth0")
    with pytest.raises(LabError, match="not a namespace of this lab"):
        lab.run("a", ["true"])
    with pytest.raises(LabError, match="no interface"):
        lab.up(a, "eth9")


def test_router_advertisements_on_a_bridge(lab):
    host, switch = lab.netns("host"), lab.netns("sw")
    lab.bridge(switch, "br0", router_advertisements=True)
    lab.veth(host, "eth0", switch, "port-h", bridge_b="br0")
    listener = lab.open_socket(host, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    listener.settimeout(5)
    while True:
        packet = listener.recv(2048)
        if packet[0] == netlab.ICMPV6_RA:
            break
    # Empty: no M/O flags, router lifetime 0, no options, so hosts take no address or route.
    assert packet[4:] == netlab.empty_router_advertisement()[4:]
