"""Throwaway networks for integration tests: namespaces, veths, bridges, taps, processes in them.

Links and namespaces are made with pyroute2 (one netlink socket per namespace, kept open);
commands run through `ip netns exec`, which also gives them the namespace's own /sys. Nothing
is created in the host namespace, so deleting a Lab's namespaces removes every link it made.
Names are `cclab-<pid>-<random>-<name>`: parallel runs never collide, and a later Lab removes
leftovers of a run whose pid is gone (SIGKILLed pytest), killing by pid what still runs in them.

iPXE (the qemu ROM) finishes configuring only when IPv6 router discovery ends too: ~16 s of
solicitations when nothing answers, DHCP lease or not. Turning IPv6 off on the host side does not
shorten that (measured: still 16 s). An answer does: `bridge(..., router_advertisements=True)`
answers each solicitation with an empty RA (no prefix, lifetime 0, no M/O flags), which ends
iPXE's IPv6 configuration at once without giving it an address or a route (measured: DHCP done
0.1 s after iPXE starts configuring, when the DHCP reply also carries option 175.176=1).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

PREFIX = "cclab"
BR_STATE_FORWARDING = 3
IFA_F_NODAD = 0x02
NETNS_DIR = Path("/run/netns")

# Tests that build networks: apply with `pytestmark = netlab.needs_root`.
needs_root = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates network namespaces, bridges and taps"
    ),
]


class LabError(Exception):
    """A lab network or process could not be set up; the message says which and why."""


class Lab:
    """Namespaces, links and processes for one test; close() (or `with`) removes all of it."""

    def __init__(self) -> None:
        cleanup_stale()
        self.tag = f"{PREFIX}-{os.getpid()}-{secrets.token_hex(2)}"
        # Scratch space for logs and configs of this lab; removed by close().
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.namespaces: list[str] = []
        self._sockets: dict[str, IPRoute] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._advertisers: list[RouterAdvertiser] = []
        self._open_sockets: list[socket.socket] = []
        self._closed = False
        # A script that never reaches close() still cleans up when the interpreter exits.
        atexit.register(self.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Namespaces and links -------------------------------------------------------------

    def netns(self, name: str) -> str:
        """Create a namespace with lo up; returns its full name, used by every other call."""
        full = f"{self.tag}-{name}"
        if full in self.namespaces:
            raise LabError(f"namespace {name!r} already exists in this lab")
        netns.create(full)
        self.namespaces.append(full)
        self.up(full, "lo")
        return full

    def bridge(
        self,
        ns: str,
        name: str = "br0",
        *,
        mtu: int | None = None,
        ipv6: bool = False,
        router_advertisements: bool = False,
    ) -> str:
        """A bridge that forwards at once (no STP, forward_delay 0, no multicast snooping).

        IPv6 stays off on the bridge itself unless asked, so the host sends no DAD/MLD/RS
        noise into captures; router_advertisements=True turns it on and starts the responder.
        """
        ipr = self._ipr(ns)
        ipr.link(
            "add",
            ifname=name,
            kind="bridge",
            # Without a MAC of its own a bridge takes its lowest port's and changes it as ports
            # come and go; an address on it then moves under its peers' ARP caches (seen with
            # libvirt's fe:54:.. taps joining during a migration).
            address="02:" + ":".join(secrets.token_hex(1) for _ in range(5)),
            br_forward_delay=0,
            br_stp_state=0,
            br_mcast_snooping=0,
        )
        if ipv6 or router_advertisements:
            # The responder must send from a link-local address, which DAD would hold back ~1 s.
            self.sysctl(ns, f"net.ipv6.conf.{name}.accept_dad", "0")
        else:
            self.sysctl(ns, f"net.ipv6.conf.{name}.disable_ipv6", "1")
        if mtu is not None:
            self.set_mtu(ns, name, mtu)
        self.up(ns, name)
        if router_advertisements:
            self._advertisers.append(RouterAdvertiser(ns, name, self._index(ns, name)))
        return name

    def veth(
        self,
        ns_a: str,
        name_a: str,
        ns_b: str,
        name_b: str,
        *,
        mtu: int | None = None,
        bridge_a: str | None = None,
        bridge_b: str | None = None,
    ) -> tuple[str, str]:
        """A veth pair from ns_a to ns_b, each end optionally a port of a bridge in its namespace.

        Returns once both ends carry traffic: see wait_running().
        """
        for name in (name_a, name_b):
            if len(name) > 15:
                raise LabError(f"interface name {name!r} is longer than 15 characters")
        ipr = self._ipr(ns_a)
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        ends = ((ns_a, name_a, bridge_a), (ns_b, name_b, bridge_b))
        for ns, name, bridge in ends:
            if mtu is not None:
                self.set_mtu(ns, name, mtu)
            if bridge is not None:
                self.attach(ns, name, bridge)
            self.up(ns, name)
        for ns, name, _ in ends:
            self.wait_running(ns, name)
        return name_a, name_b

    def tap(self, ns: str, name: str, *, bridge: str | None = None, mtu: int | None = None) -> str:
        """A persistent tap device (for qemu's `-netdev tap,ifname=...`), up, optionally bridged."""
        if len(name) > 15:
            raise LabError(f"interface name {name!r} is longer than 15 characters")
        # pyroute2 makes taps through /dev/net/tun in its own process; `ip` is simpler here.
        self.run(ns, ["ip", "tuntap", "add", "dev", name, "mode", "tap"])
        if mtu is not None:
            self.set_mtu(ns, name, mtu)
        if bridge is not None:
            self.attach(ns, name, bridge)
        self.up(ns, name)
        return name

    def delete_link(self, ns: str, ifname: str) -> None:
        """Delete a link (a veth takes its peer with it); close() does this for all of them."""
        self._ipr(ns).link("del", index=self._index(ns, ifname))

    def attach(self, ns: str, ifname: str, bridge: str) -> None:
        """Make ifname a port of bridge; IPv6 goes off on the port, which needs no address."""
        # Without this every port sends its own DAD, MLD and router solicitations into the
        # segment, which shows up in every capture a test takes.
        self.sysctl(ns, f"net.ipv6.conf.{ifname}.disable_ipv6", "1")
        ipr = self._ipr(ns)
        ipr.link("set", index=self._index(ns, ifname), master=self._index(ns, bridge))

    def wait_running(self, ns: str, ifname: str, timeout: float = 5) -> None:
        """Wait until ifname is operationally up and, if a bridge port, forwarding.

        The kernel applies carrier changes in its linkwatch work, which runs at most once a
        second; until then a new bridge port drops frames (measured: the first ARP lost and
        1 s added to the first ping when another link had changed just before).
        """
        ipr = self._ipr(ns)
        index = self._index(ns, ifname)
        deadline = time.monotonic() + timeout
        while True:
            (link,) = ipr.link("get", index=index)
            running = link.get("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
            if running and link.get("IFLA_MASTER"):
                ports = ipr.get_links(family=socket.AF_BRIDGE)
                states = [
                    p.get(("IFLA_PROTINFO", "IFLA_BRPORT_STATE"))
                    for p in ports
                    if p["index"] == index
                ]
                running = states == [BR_STATE_FORWARDING]
            if running:
                return
            if time.monotonic() > deadline:
                state = link.get("IFLA_OPERSTATE")
                raise LabError(f"{ifname} in {ns} not running after {timeout} s (state {state})")
            time.sleep(0.02)

    def address(self, ns: str, ifname: str, cidr: str) -> None:
        """Add an IPv4 or IPv6 address, e.g. "10.20.0.1/24" or "fd00::1/64".

        IPv6 addresses skip duplicate address detection, which would hold them back ~1-2 s.
        """
        address, _, prefixlen = cidr.partition("/")
        if not prefixlen:
            raise LabError(f"address {cidr!r} needs a prefix length")
        extra = {"flags": IFA_F_NODAD} if ":" in address else {}
        self._ipr(ns).addr(
            "add",
            index=self._index(ns, ifname),
            address=address,
            prefixlen=int(prefixlen),
            **extra,
        )

    def set_mtu(self, ns: str, ifname: str, mtu: int) -> None:
        self._ipr(ns).link("set", index=self._index(ns, ifname), mtu=mtu)

    def up(self, ns: str, ifname: str) -> None:
        self._ipr(ns).link("set", index=self._index(ns, ifname), state="up")

    def mtu(self, ns: str, ifname: str) -> int:
        (link,) = self._ipr(ns).link("get", index=self._index(ns, ifname))
        return int(link.get("IFLA_MTU"))

    def links(self, ns: str) -> list[str]:
        return [str(link.get("IFLA_IFNAME")) for link in self._ipr(ns).get_links()]

    def open_socket(self, ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
        """A socket inside ns (e.g. AF_PACKET to capture or inject frames); closed by close()."""
        self._require(ns)
        sock = netns.create_socket(ns, family, kind, proto, flags=0)
        self._open_sockets.append(sock)
        return sock

    def sysctl(self, ns: str, key: str, value: str) -> None:
        # /proc/sys/net shows the namespace of the process that opens it, hence a subprocess.
        self.run(ns, ["sysctl", "-qw", f"{key}={value}"])

    # Processes ---------------------------------------------------------------------------

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside ns and wait; check=True raises LabError with its output on failure."""
        self._require(ns)
        try:
            result = subprocess.run(
                ["ip", "netns", "exec", ns, *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=None if env is None else {**os.environ, **env},
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{' '.join(argv)} in {ns} did not finish in {timeout} s") from exc
        if check and result.returncode != 0:
            raise LabError(
                f"{' '.join(argv)} in {ns} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        log_path: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv inside ns in the background, stdout+stderr to log_path (None: discard).

        The process leads its own process group; stop() and close() signal that group by id.
        """
        self._require(ns)
        log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            # `ip netns exec` execs argv after setns, so the pid is argv's own.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5) -> int:
        """SIGTERM the process group, SIGKILL it after `timeout` s; returns the exit status."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        # Children left in the group (a shell's background jobs) go too.
        _signal_group(proc.pid, signal.SIGKILL)
        return int(proc.returncode)

    # Teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every spawned process, then delete every namespace (and so every link)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors: list[str] = []
        for advertiser in self._advertisers:
            advertiser.close()
        for sock in self._open_sockets:
            sock.close()
        for proc in reversed(self._procs):
            try:
                self.stop(proc, timeout=3)
            except Exception as exc:  # teardown must go on: report after the rest is gone
                errors.append(f"pid {proc.pid}: {exc}")
        for ipr in self._sockets.values():
            ipr.close()
        self._sockets.clear()
        for ns in reversed(self.namespaces):
            try:
                _remove_namespace(ns)
            except Exception as exc:
                errors.append(f"{ns}: {exc}")
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise LabError("lab teardown incomplete: " + "; ".join(errors))

    # Internals ----------------------------------------------------------------------------

    def _require(self, ns: str) -> None:
        if ns not in self.namespaces:
            raise LabError(f"{ns!r} is not a namespace of this lab (use the name netns() returned)")

    def _ipr(self, ns: str) -> IPRoute:
        self._require(ns)
        if ns not in self._sockets:
            self._sockets[ns] = IPRoute(netns=ns, flags=0)
        return self._sockets[ns]

    def _index(self, ns: str, ifname: str) -> int:
        found = self._ipr(ns).link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"no interface {ifname!r} in {ns}")
        return int(found[0])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _pids_in(ns: str) -> list[int]:
    # What `ip netns pids` does: processes whose network namespace is this one.
    try:
        target = os.stat(NETNS_DIR / ns)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                st = os.stat(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                pids.append(int(entry))
    return pids


def _remove_namespace(ns: str) -> None:
    # A namespace with a process still inside outlives its name, links and all: kill first.
    for _ in range(50):
        pids = _pids_in(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        netns.remove(ns)


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose creating process is gone; returns their names."""
    removed = []
    for ns in netns.listnetns():
        parts = ns.split("-")
        if len(parts) < 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _remove_namespace(ns)
        removed.append(ns)
    return removed


# Router advertisement responder ---------------------------------------------------------

ICMPV6_RS = 133
ICMPV6_RA = 134
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"


def empty_router_advertisement() -> bytes:
    """An RA saying "no prefixes, not a default router, no DHCPv6"; the kernel fills the sum."""
    return struct.pack("!BBHBBHII", ICMPV6_RA, 0, 0, 64, 0, 0, 0, 0)


class RouterAdvertiser:
    """Answers router solicitations on one interface at once and advertises every `interval` s.

    Runs as a thread of the test process on a raw ICMPv6 socket opened inside the namespace
    (pyroute2 hands it over from a child), so it costs no subprocess and no start-up delay.
    """

    def __init__(self, ns: str, ifname: str, ifindex: int, interval: float = 1.0) -> None:
        sock = netns.create_socket(
            ns, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, flags=0
        )
        # Names and indexes in these options resolve in the socket's namespace, not ours.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        # Neighbour discovery messages with any other hop limit must be dropped (RFC 4861 6.1).
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        # Solicitations go to all-routers, which a host joins only when forwarding.
        mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        self._sock = sock
        self._destination = (ALL_NODES, 0, 0, ifindex)
        self._interval = interval
        self._stopping = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._serve, name=f"ra-{ifname}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        advert = empty_router_advertisement()
        next_unsolicited = 0.0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_unsolicited:
                self._send(advert)
                next_unsolicited = now + self._interval
            # Short waits so close() is prompt.
            wait = min(0.2, max(0.0, next_unsolicited - now))
            ready, _, _ = select.select([self._sock], [], [], wait)
            if ready:
                packet = self._sock.recv(2048)
                if packet and packet[0] == ICMPV6_RS:
                    self._send(advert)

    def _send(self, advert: bytes) -> None:
        try:
            self._sock.sendto(advert, self._destination)
            self.sent += 1
        except OSError as exc:
            # The bridge has no carrier (so no link-local address) until its first port is up.
            if exc.errno not in (errno.EADDRNOTAVAIL, errno.ENETDOWN, errno.ENETUNREACH):
                raise
