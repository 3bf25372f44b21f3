"""DnsServer on 127.0.0.1 against the real BIND `dig`, over UDP and TCP, before and after a flood
of 100,000 mutated datagrams; plus TCP framing, idle timeout and start-up errors from Python."""

from __future__ import annotations

import ipaddress
import random
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import TypeVar

import dns.message
import dns.rcode
import pytest

from cloudctl.dns.server import DnsServer
from cloudctl.dns.zone import DnsError, ZoneSettings
from tests.serverthread import ServerThread
from tests.unit.dns.test_fuzz import SEEDS, mutate

T = TypeVar("T")

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig (bind9-dnsutils)")

SETTINGS = ZoneSettings(
    domain="cloud.test",
    server_address=ipaddress.IPv4Address("10.20.0.2"),
    ttl=300,
    subnet=ipaddress.IPv4Network("10.20.0.0/16"),
)


class Inventory:
    """The daemon's index, reduced to the three calls the zone makes."""

    def __init__(self) -> None:
        self.nodes = {"hn1": ipaddress.IPv4Address("10.20.0.5")}

    def address_of(self, label: str) -> ipaddress.IPv4Address | None:
        return self.nodes.get(label)

    def name_of(self, address: ipaddress.IPv4Address) -> str | None:
        return next((label for label, a in self.nodes.items() if a == address), None)

    def serial(self) -> int:
        return 7


class DnsThread(ServerThread[DnsServer]):
    """A DnsServer on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, **options: float) -> None:
        server = DnsServer(Inventory(), SETTINGS, [("127.0.0.1", 0)], **options)
        super().__init__(server, call_timeout=10)

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]


@pytest.fixture(scope="module")
def running() -> Iterator[DnsThread]:
    with DnsThread() as thread:
        yield thread


def dig(port: int, *args: str) -> str:
    result = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=2", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


TRANSPORTS = pytest.mark.parametrize("transport", ["+notcp", "+tcp"])


def test_udp_and_tcp_share_one_free_port(running: DnsThread) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for sock in (udp, tcp):
            with pytest.raises(OSError):
                sock.bind(("127.0.0.1", running.port))
    finally:
        udp.close()
        tcp.close()


@TRANSPORTS
def test_dig_resolves_a_node(running: DnsThread, transport: str) -> None:
    assert dig(running.port, transport, "+short", "hn1.cloud.test").split() == ["10.20.0.5"]


@TRANSPORTS
def test_dig_echoes_mixed_case_and_gets_an_authoritative_answer(
    running: DnsThread, transport: str
) -> None:
    out = dig(running.port, transport, "HN1.Cloud.TEST", "A")
    assert "status: NOERROR" in out and " aa " in out.split("flags:")[1].split(";")[0] + " "
    assert "HN1.Cloud.TEST.\t\t300\tIN\tA\t10.20.0.5" in out


@TRANSPORTS
def test_dig_reverse_lookup(running: DnsThread, transport: str) -> None:
    assert dig(running.port, transport, "+short", "-x", "10.20.0.5").split() == ["hn1.cloud.test."]


@TRANSPORTS
def test_dig_outside_name_is_refused(running: DnsThread, transport: str) -> None:
    out = dig(running.port, transport, "www.example.com")
    assert "status: REFUSED" in out
    assert "recursion requested but not available" in out


@TRANSPORTS
def test_dig_unknown_name_in_zone_is_nxdomain_with_soa(running: DnsThread, transport: str) -> None:
    out = dig(running.port, transport, "nothere.cloud.test")
    assert "status: NXDOMAIN" in out
    assert "cloud.test.\t\t60\tIN\tSOA\tns.cloud.test. hostmaster.cloud.test. 7 " in out


def test_dig_soa_ns_and_nodata(running: DnsThread) -> None:
    assert dig(running.port, "+short", "cloud.test", "NS").split() == ["ns.cloud.test."]
    soa = dig(running.port, "+short", "cloud.test", "SOA").split()
    assert soa[:3] == ["ns.cloud.test.", "hostmaster.cloud.test.", "7"]
    out = dig(running.port, "hn1.cloud.test", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "AUTHORITY: 1" in out


def test_dig_unknown_edns_version_is_badvers(running: DnsThread) -> None:
    out = dig(running.port, "+edns=1", "+noednsnegotiation", "hn1.cloud.test")
    assert "status: BADVERS" in out


def test_dig_several_queries_on_one_tcp_connection(running: DnsThread) -> None:
    before = running.server.counters.tcp_connections
    out = dig(running.port, "+tcp", "+keepopen", "+short", "hn1.cloud.test", "ns.cloud.test")
    assert out.split() == ["10.20.0.5", "10.20.0.2"]
    assert running.server.counters.tcp_connections == before + 1


def _udp_exchange(sock: socket.socket, port: int, wire: bytes) -> bytes:
    sock.sendto(wire, ("127.0.0.1", port))
    return sock.recv(65535)


def test_100k_mutated_datagrams_then_dig_still_answers(running: DnsThread) -> None:
    counters = running.server.counters
    before = counters.as_dict()
    rng = random.Random(1234)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sent = 0
    try:
        # Batches small enough for the server's receive buffer; after each, a probe whose answer
        # proves the server read the whole batch (one socket, read in order).
        for batch in range(1000):
            for _ in range(100):
                sock.sendto(mutate(rng, rng.choice(SEEDS)), ("127.0.0.1", running.port))
                sent += 1
            probe_id = batch & 0xFFFF
            probe = dns.message.make_query("hn1.cloud.test.", "A", id=probe_id).to_wire()
            sock.sendto(probe, ("127.0.0.1", running.port))
            while True:  # skip the batch's own replies until the probe's
                reply = sock.recv(65535)
                if reply[:2] == struct.pack("!H", probe_id) and reply == _expected(probe):
                    break
    finally:
        sock.close()
    assert sent == 100_000
    after = counters.as_dict()
    delta = {key: after[key] - before[key] for key in after}
    assert delta["queries"] == sent + 1000  # nothing lost in the kernel, nothing uncounted
    assert delta["queries"] == delta["answered"] + delta["dropped"]
    assert delta["dropped"] > 5_000 and delta["formerr"] > 30_000
    assert delta["refused"] > 500 and delta["notimp"] > 1_000
    assert dig(running.port, "+short", "hn1.cloud.test").split() == ["10.20.0.5"]
    assert dig(running.port, "+tcp", "+short", "-x", "10.20.0.5").split() == ["hn1.cloud.test."]


def _expected(probe: bytes) -> bytes:
    from cloudctl.dns.zone import answer

    reply = answer(probe, Inventory(), SETTINGS)
    assert reply is not None
    return reply


def _framed(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def _read_framed(sock: socket.socket) -> bytes:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    (length,) = struct.unpack("!H", exactly(2))
    return exactly(length)


def test_tcp_pipelined_split_and_garbage_frames(running: DnsThread) -> None:
    queries = [dns.message.make_query("hn1.cloud.test.", "A", id=i) for i in (1, 2, 3)]
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"".join(_framed(q.to_wire()) for q in queries))  # three in one write
        assert [dns.message.from_wire(_read_framed(sock)).id for _ in queries] == [1, 2, 3]
        wire = _framed(dns.message.make_query("ns.cloud.test.", "A", id=4).to_wire())
        for index in range(len(wire)):  # one byte at a time
            sock.sendall(wire[index : index + 1])
        assert dns.message.from_wire(_read_framed(sock)).id == 4
        junk = struct.pack("!6H", 5, 0x0100, 1, 0, 0, 0) + b"\x3fab"  # a label past the end
        sock.sendall(_framed(b"") + _framed(junk))  # dropped, then FORMERR
        reply = dns.message.from_wire(_read_framed(sock))
        assert reply.id == 5 and reply.rcode() == dns.rcode.FORMERR
        sock.sendall(_framed(queries[0].to_wire()))  # the connection is still usable
        assert dns.message.from_wire(_read_framed(sock)).id == 1


def test_tcp_idle_connections_are_closed() -> None:
    with (
        DnsThread(tcp_idle_timeout=0.3) as thread,
        socket.create_connection(("127.0.0.1", thread.port), timeout=5) as sock,
    ):
        started = time.monotonic()
        sock.sendall(b"\x00")  # half a length prefix, then silence
        assert sock.recv(1) == b""
        assert 0.2 < time.monotonic() - started < 4


def test_udp_short_and_response_datagrams_get_nothing(running: DnsThread) -> None:
    before = running.server.counters.dropped
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.3)
        response = dns.message.make_response(dns.message.make_query("hn1.cloud.test.", "A"))
        for junk in (b"", b"\x12\x34\x01", response.to_wire()):
            sock.sendto(junk, ("127.0.0.1", running.port))
            with pytest.raises(TimeoutError):
                sock.recv(512)
    assert running.server.counters.dropped == before + 3


def test_start_on_a_busy_port_says_so(running: DnsThread) -> None:
    async def start_second() -> None:
        server = DnsServer(Inventory(), SETTINGS, [("127.0.0.1", running.port)])
        await server.start()

    with pytest.raises(DnsError, match=f"udp 127.0.0.1:{running.port}"):
        running.call(start_second())
