"""cloudctl's TftpServer against real TFTP clients in network namespaces: curl, atftp, tftp-hpa.

Server namespace `srv` (srv0 10.20.0.2/24) runs the server standalone (tftp_server_main.py) on
port 69, client namespace `cli` (cli0 10.20.0.9/24) runs the clients; one veth between them.
Raw-protocol checks use UDP sockets opened inside `cli` from this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import netlab
from tests.integration.tftp_server_main import rendered_config
from tests.unit.pxe.test_tftp_fuzz import SEED_PACKETS, SESSION_SEED_PACKETS, mutate

pytestmark = netlab.needs_root

SERVER_IP, CLIENT_IP, OTHER_CLIENT_IP = "10.20.0.2", "10.20.0.9", "10.20.0.10"
LAUNCHER = Path(__file__).with_name("tftp_server_main.py")
BIG_SIZE = 33 * 1024 * 1024  # > 65535 blocks of 512: the block number wraps to 0

# Served files: name -> size. "exact" sizes are whole numbers of blocks for that client.
FILES = {
    "small.bin": 1000,
    "exact1468.bin": 1468 * 40,
    "exact512.bin": 512 * 40,
    "empty.bin": 0,
    "boot/kernel.img": 300_000,
}


@dataclass
class Server:
    proc: object
    log: Path
    stats_socket: Path

    def stats(self) -> dict[str, int]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.stats_socket))
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return json.loads(b"".join(chunks))

    def log_text(self) -> str:
        return self.log.read_text()


class Rig:
    def __init__(self, lab: netlab.Lab, srv: str, cli: str, root: Path) -> None:
        self.lab, self.srv, self.cli, self.root = lab, srv, cli, root
        self.server: Server | None = None
        self.out = lab.workdir / "out"
        self.out.mkdir()

    def start_server(self, name: str, *args: str) -> Server:
        log = self.lab.workdir / f"{name}.log"
        stats = self.lab.workdir / f"{name}.sock"
        argv = [sys.executable, str(LAUNCHER), "--root", str(self.root), "--interface", "srv0"]
        proc = self.lab.spawn(self.srv, [*argv, "--stats", str(stats), *args], log)
        deadline = time.monotonic() + 20
        while not (log.exists() and "TFTP ready" in log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"TFTP server did not start: {log.read_text()}")
            time.sleep(0.05)
        return Server(proc, log, stats)

    def client(self, *argv: str, timeout: float = 60, check: bool = True):
        return self.lab.run(self.cli, list(argv), timeout=timeout, check=check)

    def tftp_hpa(
        self, command: str, *names: str, port: int = 69, check: bool = True, mode: str = "binary"
    ):
        """tftp-hpa in octet mode unless asked (its default, netascii, translates CR/LF)."""
        argv = ["tftp", "-m", mode, SERVER_IP, str(port), "-c", command, *names]
        return self.client(*argv, timeout=240, check=check)

    def socket(self) -> socket.socket:
        sock = self.lab.open_socket(self.cli, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((CLIENT_IP, 0))
        sock.settimeout(5)
        return sock

    def fetched(self, name: str) -> bytes:
        return (self.out / name).read_bytes()

    def source(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


@pytest.fixture(scope="module")
def rig():
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", f"{SERVER_IP}/24")
        lab.address(cli, "cli0", f"{CLIENT_IP}/24")
        lab.address(cli, "cli0", f"{OTHER_CLIENT_IP}/24")  # a second node, for the total cap
        root = lab.workdir / "root"  # removed with the lab, 33 MiB file and all
        rng = random.Random(1350)
        for name, size in FILES.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(rng.randbytes(size))
        (root / "big33.bin").write_bytes(os.urandom(BIG_SIZE))
        (root / "escape").symlink_to("/etc/passwd")
        rig = Rig(lab, srv, cli, root)
        rig.server = rig.start_server("main")  # the one most tests talk to, on port 69
        yield rig


@pytest.fixture
def server(rig) -> Server:
    assert rig.server is not None and rig.server.proc.poll() is None, rig.server.log_text()
    return rig.server


def _wait(condition, timeout: float = 10.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError("condition not met in time")


# Real clients: byte-for-byte ----------------------------------------------------------------

CURL_FILES = ["small.bin", "exact1468.bin", "empty.bin", "boot/kernel.img"]


@pytest.mark.parametrize("name", CURL_FILES)
def test_curl_with_blksize_1468(rig, server, name):
    out = rig.out / f"curl-{name.replace('/', '_')}"
    # curl 7.88 rejects "tsize 0" in any OACK ("invalid tsize -:0:- value in OACK packet"; it
    # fails the same way against in.tftpd and dnsmasq), and it always asks for tsize: so the
    # empty file is fetched without options, which still checks the lone empty DATA 1.
    options = ["--tftp-no-options"] if FILES[name] == 0 else ["--tftp-blksize", "1468"]
    rig.client("curl", "-sS", *options, "-o", str(out), f"tftp://{SERVER_IP}/{name}")
    assert out.read_bytes() == rig.source(name)


@pytest.mark.parametrize("name", CURL_FILES)
def test_atftp_with_blksize_1468_and_windowsize_16(rig, server, name):
    out = rig.out / f"atftp-{name.replace('/', '_')}"
    result = rig.client(
        "atftp",
        "--option",
        "blksize 1468",
        "--option",
        "windowsize 16",
        "--trace",
        "-g",
        "-r",
        name,
        "-l",
        str(out),
        SERVER_IP,
    )
    # atftp's trace shows the server's OACK: both options were negotiated, not ignored.
    trace = result.stdout + result.stderr
    oack = [line for line in trace.splitlines() if "OACK" in line]
    assert oack and "blksize: 1468" in oack[0] and "windowsize: 16" in oack[0], trace[:2000]
    assert out.read_bytes() == rig.source(name)


@pytest.mark.parametrize("name", ["small.bin", "exact512.bin", "empty.bin"])
def test_tftp_hpa_plain_512(rig, server, name):
    # tftp-hpa sends no options: DATA of 512 bytes, one ACK each.
    out = rig.out / f"hpa-{name}"
    rig.tftp_hpa("get", name, str(out))
    assert out.read_bytes() == rig.source(name)


@pytest.mark.parametrize("name", ["small.bin", "text.cfg"])
def test_tftp_hpa_netascii_mode_gets_the_file_unchanged(rig, server, name):
    # netascii (tftp-hpa's default) goes CR/LF-translated on the wire and back at the client:
    # a server that skipped the translation would corrupt binary files (lone LFs and CRs).
    (rig.root / "text.cfg").write_bytes(b"DEFAULT node\nLABEL node\r\n  KERNEL k\rx\n")
    out = rig.out / f"ascii-{name}"
    rig.tftp_hpa("get", name, str(out), mode="ascii")
    assert out.read_bytes() == rig.source(name)


def test_tftp_hpa_33_mib_rolls_the_block_number_over(rig, server):
    before = server.stats()
    out = rig.out / "big33.bin"
    started = time.monotonic()
    rig.tftp_hpa("get", "big33.bin", str(out))
    elapsed = time.monotonic() - started
    with out.open("rb") as got, (rig.root / "big33.bin").open("rb") as want:
        assert (
            hashlib.file_digest(got, "sha256").digest()
            == hashlib.file_digest(want, "sha256").digest()
        )
    assert BIG_SIZE // 512 + 1 > 65536  # the transfer really wrapped
    after = server.stats()
    assert after["completed"] == before.get("completed", 0) + 1
    print(f"33 MiB at blksize 512 in {elapsed:.1f} s")


def test_rendered_per_mac_file(rig, server):
    mac = rig.lab.run(rig.cli, ["cat", "/sys/class/net/cli0/address"]).stdout.strip()
    name = "pxelinux.cfg/01-" + mac.replace(":", "-")
    out = rig.out / "rendered"
    rig.tftp_hpa("get", name, str(out))
    assert out.read_bytes() == rendered_config(mac.replace(":", "-"), CLIENT_IP)
    assert not (rig.root / "pxelinux.cfg").exists()  # rendered on request, never on disk


# Refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "reason"),
    [
        ("../etc/passwd", "parent-directory component"),
        ("//etc/passwd", "absolute path"),
        ("escape", "resolves outside the root"),
        ("boot/../small.bin", "parent-directory component"),
    ],
)
def test_traversal_is_an_access_violation(rig, server, requested, reason):
    out = rig.out / "refused"
    result = rig.tftp_hpa("get", requested, str(out), check=False)
    assert "Error code 2" in result.stderr + result.stdout, result
    assert reason in result.stderr + result.stdout
    warnings = [
        line
        for line in server.log_text().splitlines()
        if line.startswith("WARNING") and repr(requested) in line and CLIENT_IP in line
    ]
    assert warnings, server.log_text()[-2000:]


def test_single_leading_slash_stays_inside_the_root(rig, server):
    # "/etc/passwd" is <root>/etc/passwd (tftpd-hpa -s does the same): not found, not passwd.
    result = rig.tftp_hpa("get", "/etc/passwd", str(rig.out / "x"), check=False)
    assert "Error code 1" in result.stderr + result.stdout, result
    rig.tftp_hpa("get", "/small.bin", str(rig.out / "slash"))
    assert rig.fetched("slash") == rig.source("small.bin")


def test_write_request_is_refused(rig, server):
    before = server.stats().get("refused_write", 0)
    local = rig.out / "upload"
    local.write_bytes(b"not welcome")
    result = rig.tftp_hpa("put", str(local), "uploaded", check=False)
    assert "Error code 2: read-only server" in result.stderr + result.stdout, result
    assert server.stats()["refused_write"] == before + 1
    assert not (rig.root / "uploaded").exists()


def test_second_transfer_from_one_client_is_busy_at_max_per_client_1(rig):
    capped = rig.start_server("capped", "--port", "6969", "--max-per-client", "1")
    held = rig.socket()
    try:
        held.sendto(_rrq("boot/kernel.img", blksize="1468"), (SERVER_IP, 6969))
        oack, tid = held.recvfrom(2048)
        assert oack[:2] == b"\x00\x06"  # the first transfer runs (waiting for our ACK)
        result = rig.client(
            "curl",
            "-v",
            "--tftp-blksize",
            "1468",
            "-o",
            str(rig.out / "busy"),
            f"tftp://{SERVER_IP}:6969/small.bin",
            check=False,
        )
        assert result.returncode != 0
        assert "server busy, retry" in result.stderr, result.stderr
        assert capped.stats()["busy"] == 1
        # Once the first transfer ends, the same client is served again.
        held.sendto(struct.pack("!HH", 5, 0) + b"done\x00", tid)
        _wait(lambda: capped.stats()["active"] == 0)
        rig.client(
            "curl",
            "-sS",
            "--tftp-blksize",
            "1468",
            "-o",
            str(rig.out / "after-busy"),
            f"tftp://{SERVER_IP}:6969/small.bin",
        )
        assert rig.fetched("after-busy") == rig.source("small.bin")
    finally:
        held.close()
        rig.lab.stop(capped.proc)


def test_any_client_is_busy_at_max_transfers(rig):
    capped = rig.start_server("total", "--port", "6971", "--max-transfers", "1")
    held = rig.socket()
    try:
        held.sendto(_rrq("boot/kernel.img", blksize="1468"), (SERVER_IP, 6971))
        assert held.recvfrom(2048)[0][:2] == b"\x00\x06"
        result = rig.tftp_hpa("get", "small.bin", str(rig.out / "busy"), port=6971, check=False)
        assert "Error code 0: server busy, retry" in result.stdout + result.stderr, result
        # tftp-hpa cannot pick its source address; curl can: another node, same answer.
        result = rig.client(
            "curl", "-v", "--interface", OTHER_CLIENT_IP, "-o", str(rig.out / "other-busy"),
            f"tftp://{SERVER_IP}:6971/small.bin", check=False,
        )  # fmt: skip
        assert "server busy, retry" in result.stderr, result.stderr
        assert capped.stats()["busy"] == 2
    finally:
        held.close()
        rig.lab.stop(capped.proc)


# The protocol from a raw socket -----------------------------------------------------------


def _rrq(name: str, **options: str) -> bytes:
    fields = [name, "octet"]
    for key, value in options.items():
        fields += [key, value]
    return b"\x00\x01" + b"".join(f.encode() + b"\x00" for f in fields)


def _receive_file(sock: socket.socket, tid: tuple[str, int], first: bytes, blksize: int) -> bytes:
    """Lock-step receive after the first DATA or OACK; returns the payload."""
    data, packet, expected = bytearray(), first, 1
    if packet[:2] == b"\x00\x06":
        sock.sendto(struct.pack("!HH", 4, 0), tid)
        packet, _ = sock.recvfrom(65536)
    while True:
        opcode, block = struct.unpack("!HH", packet[:4])
        assert opcode == 3, packet
        if block == expected & 0xFFFF:
            data += packet[4:]
            expected += 1
        sock.sendto(struct.pack("!HH", 4, block), tid)
        if len(packet) - 4 < blksize:
            return bytes(data)
        packet, _ = sock.recvfrom(65536)


def test_blksize_is_capped_by_the_interface_mtu_and_windowsize_by_the_limit(rig, server):
    sock = rig.socket()
    try:
        sock.sendto(_rrq("small.bin", blksize="65464", windowsize="1000"), (SERVER_IP, 69))
        oack, tid = sock.recvfrom(65536)
        assert oack == b"\x00\x06blksize\x001468\x00windowsize\x0064\x00"  # MTU 1500 - 32
        sock.sendto(struct.pack("!HH", 5, 0) + b"enough\x00", tid)
    finally:
        sock.close()


def test_falls_back_to_one_send_per_packet_when_the_kernel_refuses_gso(rig):
    # Told the MTU is 9000 on a 1500 link, the server negotiates 8192-byte blocks that the
    # kernel will not segment (EMSGSIZE): the window must still arrive, packet by packet (the
    # kernel fragments each). Devices without checksum offload refuse GSO too (EIO).
    wrong = rig.start_server("wrong-mtu", "--port", "6970", "--mtu", "9000")
    try:
        out = rig.out / "no-gso"
        rig.client(
            "atftp",
            "--option",
            "blksize 8192",
            "--option",
            "windowsize 8",
            "-g",
            "-r",
            "boot/kernel.img",
            "-l",
            str(out),
            f"{SERVER_IP}",
            "6970",
        )
        assert out.read_bytes() == rig.source("boot/kernel.img")
        assert "UDP segmentation offload unavailable" in wrong.log_text()
        assert wrong.stats()["completed"] == 1
    finally:
        rig.lab.stop(wrong.proc)


def test_duplicate_rrq_does_not_start_a_second_transfer(rig, server):
    before = server.stats()
    sock = rig.socket()
    try:
        request = _rrq("exact1468.bin", blksize="1468")
        sock.sendto(request, (SERVER_IP, 69))
        first, tid = sock.recvfrom(65536)
        sock.sendto(request, (SERVER_IP, 69))  # e.g. a client that retransmitted too soon
        _wait(lambda: server.stats()["received"] == before.get("received", 0) + 2)
        stats = server.stats()
        assert stats["started"] == before.get("started", 0) + 1
        assert stats["duplicate_requests"] == before.get("duplicate_requests", 0) + 1
        assert stats["active"] == 1
        assert _receive_file(sock, tid, first, 1468) == rig.source("exact1468.bin")
        _wait(lambda: server.stats()["active"] == 0)
    finally:
        sock.close()


def test_packet_from_another_port_gets_unknown_transfer_id(rig, server):
    before = server.stats().get("unknown_tid", 0)
    sock, stranger = rig.socket(), rig.socket()
    try:
        sock.sendto(_rrq("small.bin", blksize="512"), (SERVER_IP, 69))
        first, tid = sock.recvfrom(65536)
        assert tid[1] != 69  # the transfer answers from its own port
        stranger.sendto(struct.pack("!HH", 4, 0), tid)
        answer, source = stranger.recvfrom(2048)
        assert source == tid
        assert answer[:4] == struct.pack("!HH", 5, 5), answer
        # The stranger changed nothing: the real client still gets the whole file.
        assert _receive_file(sock, tid, first, 512) == rig.source("small.bin")
        assert server.stats()["unknown_tid"] == before + 1
    finally:
        sock.close()
        stranger.close()


# Fuzz -----------------------------------------------------------------------------------------

FUZZ_PACKETS = 100_000
FUZZ_BATCH = 200
FUZZ_SOCKETS = 16


def test_server_survives_100k_mutated_packets_then_serves(rig, server):
    rng = random.Random(0x7F7F)
    before = server.stats()
    base = before.get("received", 0)
    # Several source ports: while a transfer runs for one, its RRQs are duplicates and would
    # never reach the open/refusal code.
    socks = [rig.socket() for _ in range(FUZZ_SOCKETS)]
    for sock in socks:
        sock.setblocking(False)
    sent = aborted = 0
    started = time.monotonic()
    try:
        while sent < FUZZ_PACKETS:
            for _ in range(min(FUZZ_BATCH, FUZZ_PACKETS - sent)):
                socks[sent % FUZZ_SOCKETS].sendto(mutate(rng, SEED_PACKETS), (SERVER_IP, 69))
                sent += 1
            # Paced by the server's own count, so the kernel never drops a datagram and every
            # one of them reaches the decoder.
            target = base + sent
            _wait(lambda: server.stats()["received"] >= target, timeout=20, poll=0.001)  # noqa: B023
            aborted += sum(_abort_started_transfers(sock) for sock in socks)
        fuzzed_tids = sum(_fuzz_one_transfer(rig, rng) for _ in range(50))
    finally:
        for sock in socks:
            sock.close()
    elapsed = time.monotonic() - started
    stats = server.stats()
    print(
        f"fuzz: {sent} datagrams in {elapsed:.1f} s, {aborted} transfers started and aborted, "
        f"{fuzzed_tids} transfer ports fuzzed; counters {stats}"
    )
    assert stats["received"] - base == FUZZ_PACKETS + 50
    assert stats.get("internal_error", 0) == 0
    assert stats["malformed"] - before.get("malformed", 0) > 10_000
    assert stats["requests"] - before.get("requests", 0) > 1_000
    assert fuzzed_tids >= 40
    out = rig.out / "after-fuzz"
    rig.client(
        "curl", "-sS", "--tftp-blksize", "1468", "-o", str(out), f"tftp://{SERVER_IP}/small.bin"
    )
    assert out.read_bytes() == rig.source("small.bin")
    _wait(lambda: server.stats()["active"] == 0, timeout=60)


def _abort_started_transfers(sock: socket.socket) -> int:
    """Read the server's answers; end any transfer that started (a client giving up)."""
    aborted = 0
    while True:
        try:
            packet, source = sock.recvfrom(65536)
        except BlockingIOError:
            return aborted
        if packet[:2] in (b"\x00\x03", b"\x00\x06"):  # DATA or OACK: a transfer runs
            sock.sendto(struct.pack("!HH", 5, 0) + b"fuzzer gives up\x00", source)
            aborted += 1


def _fuzz_one_transfer(rig: Rig, rng: random.Random) -> int:
    """Hostile datagrams at a live transfer's port, from its own client; 1 if one started."""
    client = rig.socket()
    try:
        client.sendto(_rrq("boot/kernel.img", blksize="512", windowsize="4"), (SERVER_IP, 69))
        first, tid = client.recvfrom(65536)
        if first[:2] != b"\x00\x06":
            return 0
        for _ in range(100):
            client.sendto(mutate(rng, SESSION_SEED_PACKETS), tid)
        client.sendto(struct.pack("!HH", 5, 0) + b"done\x00", tid)
        return 1
    finally:
        client.close()
