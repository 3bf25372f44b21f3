"""Tests for the TFTP transfer workers: the hand-off messages (handoff.py), and TftpServer with
worker processes (workers.py, worker.py) on 127.0.0.1, spoken to with a raw UDP socket: files
served lock-step and windowed, a worker killed mid-transfer, no worker left behind.

The real-client checks (curl, atftp, tftp-hpa) are in tests/integration/test_tftp_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloudctl.pxe.bootfiles import BootFiles
from cloudctl.pxe.tftp.codec import ReadRequest
from cloudctl.pxe.tftp.handoff import (
    GsoRefused,
    Handoff,
    HandoffError,
    Ready,
    Report,
    decode_message,
    encode_message,
)
from cloudctl.pxe.tftp.server import TftpServer
from cloudctl.pxe.tftp.session import TransferLimits

ROOT = Path(__file__).resolve().parents[3]
RENDERED = b"DEFAULT node\nLABEL node\n  KERNEL vmlinuz\n"
SIZES = {"small.bin": 1000, "exact.bin": 1468 * 40, "big.bin": 3 * 1024 * 1024, "empty.bin": 0}


# -- messages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Handoff(
            7,
            ("10.0.0.9", 3456),
            ReadRequest("pxelinux.0", "octet", {"blksize": "1468", "windowsize": "16"}),
            TransferLimits(max_blksize=1468, max_windowsize=64, max_retries=3),
            gso=True,
        ),
        Report(7, "completed", None, False, 1000, 1468, 1, 1000, 0, 0, 0, 1, 0, 0),
        Report(8, "failed", "no ACK after 5 retransmissions", False, timeouts=5),
        Report(9, "failed", "internal error", True, internal_error=True),
        Ready(1234),
        GsoRefused("[Errno 5] Input/output error"),
    ],
)
def test_messages_round_trip(message):
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"{}", b'{"kind": "Nope"}', b'{"kind": "Ready", "pod": 1}']
)
def test_foreign_messages_raise_handoff_error(data):
    with pytest.raises(HandoffError):
        decode_message(data)


# -- the server with workers on 127.0.0.1 --------------------------------------------------------


def render(name: str, mac: str | None, client_ip: str | None) -> bytes | None:
    return RENDERED if name == "pxelinux.cfg/default" else None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = random.Random(7440)
    for name, size in SIZES.items():
        (tmp_path / name).write_bytes(rng.randbytes(size))
    return tmp_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


Scenario = Callable[[TftpServer], Awaitable[Any]]


def serve(root: Path, scenario: Scenario, *, workers: int, **options: Any) -> TftpServer:
    """Run `scenario` against a started server in a fresh event loop; return the server."""

    async def main() -> TftpServer:
        files = BootFiles(roots=(root,), render=render, packaged={})
        server = TftpServer(
            files,
            interface=None,
            port=free_port(),
            bind_address="127.0.0.1",
            max_transfers=options.pop("max_transfers", 64),
            max_per_client=options.pop("max_per_client", 64),
            max_windowsize=options.pop("max_windowsize", 64),
            workers=workers,
            **options,
        )
        await server.start()
        try:
            await asyncio.wait_for(scenario(server), 60)
        finally:
            await server.close()
        return server

    return asyncio.run(main())


def rrq(name: str, **options: str) -> bytes:
    fields = [name, "octet"]
    for key, value in options.items():
        fields += [key, value]
    return b"\x00\x01" + b"".join(f.encode() + b"\x00" for f in fields)


class Client:
    """A blocking TFTP client on a raw socket (run in a thread beside the server's loop)."""

    def __init__(self, port: int) -> None:
        self.server = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.tid: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def ack(self, block: int) -> None:
        assert self.tid is not None
        self.sock.sendto(struct.pack("!HH", 4, block & 0xFFFF), self.tid)

    def first(self, name: str, **options: str) -> bytes:
        self.sock.sendto(rrq(name, **options), self.server)
        packet, self.tid = self.sock.recvfrom(65536)
        return packet

    def fetch(self, name: str, *, blksize: int = 512, windowsize: int = 1) -> bytes:
        """The whole file; ACKs the last block of each window (RFC 7440) or each block."""
        options = {"blksize": str(blksize)} if blksize != 512 else {}
        if windowsize > 1:
            options["windowsize"] = str(windowsize)
        packet = self.first(name, **options)
        if packet[:2] == b"\x00\x06":
            self.ack(0)
            packet, _ = self.sock.recvfrom(65536)
        data, expected = bytearray(), 1
        while True:
            opcode, block = struct.unpack("!HH", packet[:4])
            assert opcode == 3, packet
            if block == expected & 0xFFFF:
                data += packet[4:]
                expected += 1
                last = len(packet) - 4 < blksize
                if last or (expected - 1) % windowsize == 0:
                    self.ack(block)
                if last:
                    return bytes(data)
            packet, _ = self.sock.recvfrom(65536)


async def fetch(server: TftpServer, name: str, **options: int) -> bytes:
    def run() -> bytes:
        client = Client(server.port)
        try:
            return client.fetch(name, **options)
        finally:
            client.close()

    return await asyncio.to_thread(run)


async def until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_serve_lockstep_windowed_and_rendered_files(root, workers):
    got: dict[str, bytes] = {}

    async def scenario(server: TftpServer) -> None:
        assert len(server.worker_pids) == workers
        got["small"] = await fetch(server, "small.bin")
        got["exact"] = await fetch(server, "exact.bin", blksize=1468)
        got["big"] = await fetch(server, "big.bin", blksize=1468, windowsize=16)
        got["empty"] = await fetch(server, "empty.bin")
        got["rendered"] = await fetch(server, "pxelinux.cfg/default", blksize=1468)
        # Several at once, spread over the workers.
        parallel = [fetch(server, "big.bin", blksize=1468) for _ in range(4)]
        got["parallel"] = b"".join(set(await asyncio.gather(*parallel)))
        await until(lambda: server.active == 0)

    server = serve(root, scenario, workers=workers)
    for name in ("small", "exact", "big", "empty"):
        assert got[name] == (root / f"{name}.bin").read_bytes(), name
    assert got["rendered"] == RENDERED
    assert got["parallel"] == (root / "big.bin").read_bytes()
    assert server.counters["completed"] == server.counters["started"] == 9
    assert server.counters["internal_error"] == 0
    assert server.worker_pids == []


def test_worker_reports_fill_the_counters(root):
    async def scenario(server: TftpServer) -> None:
        client = await asyncio.to_thread(Client, server.port)
        try:
            await asyncio.to_thread(client.first, "exact.bin", blksize="1468")
            # A stranger's datagram on the transfer's port: ERROR 5, the transfer goes on.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.settimeout(10)
                assert client.tid is not None
                stranger.sendto(struct.pack("!HH", 4, 0), client.tid)
                answer, _ = await asyncio.to_thread(stranger.recvfrom, 2048)
                assert answer[:4] == struct.pack("!HH", 5, 5)
            client.sock.sendto(struct.pack("!HH", 5, 0) + b"enough\x00", client.tid)
            await until(lambda: server.active == 0)
        finally:
            client.close()

    server = serve(root, scenario, workers=1)
    assert server.counters["failed"] == 1
    assert server.counters["unknown_tid"] == 1
    assert server.counters["started"] == 1


def test_unserved_mode_ends_in_the_worker_with_error_4(root):
    async def scenario(server: TftpServer) -> None:
        def ask() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)
                sock.sendto(b"\x00\x01small.bin\x00mail\x00", ("127.0.0.1", server.port))
                return sock.recvfrom(2048)[0]

        assert (await asyncio.to_thread(ask))[:4] == struct.pack("!HH", 5, 4)
        await until(lambda: server.counters["failed"] == 1 and server.active == 0)

    serve(root, scenario, workers=1)


def test_killed_worker_fails_its_transfers_and_is_replaced(root):
    async def scenario(server: TftpServer) -> None:
        (victim,) = server.worker_pids
        client = await asyncio.to_thread(Client, server.port)
        try:
            oack = await asyncio.to_thread(client.first, "big.bin", blksize="1468")
            assert oack[:2] == b"\x00\x06"
            client.ack(0)
            data, _ = await asyncio.to_thread(client.sock.recvfrom, 65536)
            assert data[:4] == struct.pack("!HH", 3, 1)
            assert server.active == 1
            os.kill(victim, signal.SIGKILL)  # mid-transfer
            await until(lambda: server.counters["worker_lost"] == 1)
            assert server.active == 0 and server.counters["failed"] == 1
        finally:
            client.close()
        await until(lambda: len(server.worker_pids) == 1 and server.worker_pids != [victim])
        assert gone(victim)
        # The replacement serves, lock-step and windowed.
        assert await fetch(server, "big.bin", blksize=1468) == (root / "big.bin").read_bytes()
        assert (
            await fetch(server, "exact.bin", blksize=1468, windowsize=8)
            == (root / "exact.bin").read_bytes()
        )
        # The worker reports a transfer's end after the client has its last block.
        await until(lambda: server.counters["completed"] == 2)

    server = serve(root, scenario, workers=1)
    assert server.counters["completed"] == 2
    assert server.counters["internal_error"] == 0


def test_close_stops_every_worker(root):
    pids: list[int] = []

    async def scenario(server: TftpServer) -> None:
        pids.extend(server.worker_pids)
        client = await asyncio.to_thread(Client, server.port)
        try:
            await asyncio.to_thread(client.first, "big.bin", blksize="1468")  # left running
        finally:
            client.close()

    serve(root, scenario, workers=2)
    assert len(pids) == 2
    assert all(gone(pid) for pid in pids)


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from cloudctl.pxe.bootfiles import BootFiles, no_rendering
    from cloudctl.pxe.tftp.server import TftpServer

    async def main():
        files = BootFiles(roots=(Path(sys.argv[1]),), render=no_rendering, packaged={})
        server = TftpServer(files, interface=None, port=int(sys.argv[2]),
            bind_address="127.0.0.1", max_transfers=8, max_per_client=8, max_windowsize=8,
            workers=2)
        await server.start()
        print(*server.worker_pids, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_its_server(root, sig):
    # Only the server's own PID is signalled (not its process group): the workers must notice.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(root), str(free_port())],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert server.stdout is not None
        pids = [int(pid) for pid in server.stdout.readline().split()]
        assert len(pids) == 2 and not any(gone(pid) for pid in pids)
        server.send_signal(sig)
        server.wait(timeout=20)
        deadline = time.monotonic() + 20
        while not all(gone(pid) for pid in pids):
            assert time.monotonic() < deadline, f"workers {pids} outlived their server"
            time.sleep(0.05)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
