"""Guests that only answer ping, and a pinger that measures how long a guest stopped answering.

The initramfs brings eth0 up at the address given on the kernel command line
(`guestnet.addr=10.77.0.100/24`) and sleeps, so one image serves any number of guests. The
Pinger sends an ICMP echo every 50 ms from a raw socket opened inside a lab namespace (no ping
subprocess to parse) and counts unanswered requests and the longest silence between replies.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.guestkernel import INIT_PREAMBLE, GuestKernel, build_initramfs
from tests.netlab import Lab
from tests.qemu import NIC_MODULES

READY_LINE = "GUESTNET-READY"

# busybox `sleep` has no "infinity"; PID 1 must never exit or the kernel panics.
PINGABLE_INIT = (
    INIT_PREAMBLE
    + f"""\
addr=
for arg in $(cat /proc/cmdline); do
    case $arg in guestnet.addr=*) addr=${{arg#guestnet.addr=}} ;; esac
done
ip link set lo up
ip link set eth0 up
[ -n "$addr" ] && ip addr add "$addr" dev eth0
echo "{READY_LINE} $addr"
while :; do sleep 3600; done
"""
)


def pingable_initramfs(kernel: GuestKernel, out: Path, nic: str = "virtio-net-pci") -> Path:
    """An initramfs whose /init puts `guestnet.addr=` (from the kernel command line) on eth0."""
    return build_initramfs(kernel, PINGABLE_INIT, NIC_MODULES[nic], out)


def kernel_append(cidr: str) -> str:
    """Kernel command line for a pingable guest at cidr ("quiet": console lines cost under TCG)."""
    return f"console=ttyS0 quiet panic=-1 guestnet.addr={cidr}"


@dataclass(frozen=True)
class PingStats:
    """What a Pinger saw; `longest_gap` is the longest time between two replies (the downtime)."""

    sent: int
    received: int
    interval: float
    longest_gap: float
    gap_started: float  # time.monotonic() of the last reply before the longest gap

    @property
    def lost(self) -> int:
        return self.sent - self.received


ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"cloudctl-guestnet") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = _checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + payload


class Pinger:
    """Pings `target` every `interval` s from namespace `ns` in a thread until stop().

    Use as a context manager or start()/stop(); wait_reply() blocks until the target answers.
    Requests still unanswered when stop() is called get `grace` s before they count as lost.
    """

    def __init__(
        self, lab: Lab, ns: str, target: str, interval: float = 0.05, grace: float = 0.25
    ) -> None:
        self.target = target
        self.interval = interval
        self.grace = grace
        self._sock = lab.open_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        # Raw ICMP sockets see every echo reply in the namespace: match ours by id.
        self._ident = (os.getpid() ^ id(self)) & 0xFFFF
        self._lock = threading.Condition()
        self._sent = 0
        self._replies: list[float] = []  # arrival times, in order
        self._answered: set[int] = set()
        self._sending = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Pinger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Pinger:
        self._sending.set()
        self._thread = threading.Thread(target=self._run, name=f"ping-{self.target}", daemon=True)
        self._thread.start()
        return self

    def wait_reply(self, timeout: float, after: float | None = None) -> float:
        """Wait for a reply that arrives after `after` (default: now); returns its arrival time."""
        after = time.monotonic() if after is None else after
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (self._replies and self._replies[-1] > after):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.target} did not answer ping within {timeout} s")
                self._lock.wait(left)
            return self._replies[-1]

    def stats(self) -> PingStats:
        """Figures so far (requests sent in the last `grace` s are not counted yet)."""
        with self._lock:
            replies = list(self._replies)
            sent = self._sent
        gap, gap_started = 0.0, 0.0
        for before, after in itertools.pairwise(replies):
            if after - before > gap:
                gap, gap_started = after - before, before
        return PingStats(sent, len(replies), self.interval, gap, gap_started)

    def stop(self) -> PingStats:
        """Stop sending, wait `grace` s for late replies, and return the figures."""
        if self._thread is not None:
            self._sending.clear()
            time.sleep(self.grace)
            self._stopping.set()
            self._thread.join(timeout=5)
            self._thread = None
        return self.stats()

    def _run(self) -> None:
        address = (self.target, 0)
        seq = 0
        next_send = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            if self._sending.is_set() and now >= next_send:
                seq = (seq + 1) & 0xFFFF
                # No route yet (the link is still coming up): the request counts as lost.
                with contextlib.suppress(OSError):
                    self._sock.sendto(echo_request(self._ident, seq), address)
                with self._lock:
                    self._sent += 1
                next_send += self.interval
                if next_send < now:  # we were descheduled: do not send a burst to catch up
                    next_send = now + self.interval
            wait = max(0.0, min(0.05, next_send - time.monotonic()))
            ready, _, _ = select.select([self._sock], [], [], wait)
            if ready:
                self._receive()

    def _receive(self) -> None:
        packet, (source, _) = self._sock.recvfrom(2048)
        arrived = time.monotonic()
        header_length = (packet[0] & 0x0F) * 4  # raw IPv4 sockets hand over the IP header
        icmp = packet[header_length : header_length + 8]
        if len(icmp) < 8 or source != self.target:
            return
        kind, _, _, ident, seq = struct.unpack("!BBHHH", icmp)
        if kind != ICMP_ECHO_REPLY or ident != self._ident:
            return
        with self._lock:
            if seq in self._answered:  # a duplicate (the bridge flooded it twice)
                return
            self._answered.add(seq)
            self._replies.append(arrived)
            self._lock.notify_all()
