"""cloudctl's TftpServer with transfer worker processes against real TFTP clients in network
namespaces: curl (lock-step), atftp (windowsize), tftp-hpa (blksize 512, block rollover,
netascii, a rendered file); a worker killed mid-transfer; no worker outliving its server.

Same lab as test_tftp_peers.py: the server (tftp_server_main.py, run with `workers` set) in
namespace `srv`, the clients in `cli`, one veth between them.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import struct
import sys
import time
from pathlib import Path

import pytest

from tests import netlab
from tests.integration.test_tftp_peers import (
    BIG_SIZE,
    CLIENT_IP,
    FILES,
    LAUNCHER,
    SERVER_IP,
    Rig,
    Server,
    _rrq,
    _wait,
)
from tests.integration.tftp_server_main import rendered_config

pytestmark = netlab.needs_root

WORKERS = 2
# tftp_server_main.py with `workers` passed to TftpServer: argv[1] is the worker count.
LAUNCH_WITH_WORKERS = f"""
import functools, runpy, sys
sys.path.insert(0, {str(LAUNCHER.parents[2])!r})
from cloudctl.pxe.tftp import server
server.TftpServer = functools.partial(server.TftpServer, workers=int(sys.argv.pop(1)))
sys.argv[0] = {str(LAUNCHER)!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""
_WORKER_STARTED = re.compile(r"TFTP transfer worker \d+ started \(PID (\d+)\)")


def start_server(rig: Rig, name: str, workers: int, *args: str) -> Server:
    log = rig.lab.workdir / f"{name}.log"
    stats = rig.lab.workdir / f"{name}.sock"
    argv = [sys.executable, "-c", LAUNCH_WITH_WORKERS, str(workers), "--root", str(rig.root)]
    argv += ["--interface", "srv0", "--stats", str(stats), *args]
    proc = rig.lab.spawn(rig.srv, argv, log)
    deadline = time.monotonic() + 30
    while not (log.exists() and "TFTP ready" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"TFTP server did not start: {log.read_text()}")
        time.sleep(0.05)
    return Server(proc, log, stats)


def worker_pids(server: Server) -> list[int]:
    """Every worker the server has started, in order (restarts included), from its log."""
    return [int(pid) for pid in _WORKER_STARTED.findall(server.log_text())]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def rig():
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", f"{SERVER_IP}/24")
        lab.address(cli, "cli0", f"{CLIENT_IP}/24")
        root = lab.workdir / "root"
        rng = random.Random(7440)
        for name, size in FILES.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(rng.randbytes(size))
        (root / "big33.bin").write_bytes(os.urandom(BIG_SIZE))
        (root / "text.cfg").write_bytes(b"DEFAULT node\nLABEL node\r\n  KERNEL k\rx\n")
        rig = Rig(lab, srv, cli, root)
        rig.server = start_server(rig, "workers", WORKERS)
        yield rig


@pytest.fixture
def server(rig) -> Server:
    assert rig.server is not None and rig.server.proc.poll() is None, rig.server.log_text()
    return rig.server


def same_file(got: Path, want: Path) -> bool:
    with got.open("rb") as a, want.open("rb") as b:
        return (
            hashlib.file_digest(a, "sha256").digest() == hashlib.file_digest(b, "sha256").digest()
        )


# Real clients through the workers ------------------------------------------------------------


@pytest.mark.parametrize("name", ["small.bin", "exact1468.bin", "empty.bin", "boot/kernel.img"])
def test_curl_lockstep_through_workers(rig, server, name):
    out = rig.out / f"w-curl-{name.replace('/', '_')}"
    options = ["--tftp-no-options"] if FILES[name] == 0 else ["--tftp-blksize", "1468"]
    rig.client("curl", "-sS", *options, "-o", str(out), f"tftp://{SERVER_IP}/{name}")
    assert out.read_bytes() == rig.source(name)


@pytest.mark.parametrize("name", ["small.bin", "exact1468.bin", "boot/kernel.img", "big33.bin"])
def test_atftp_windowsize_16_through_workers(rig, server, name):
    out = rig.out / f"w-atftp-{name.replace('/', '_')}"
    result = rig.client(
        "atftp", "--option", "blksize 1468", "--option", "windowsize 16", "--trace",
        "-g", "-r", name, "-l", str(out), SERVER_IP, timeout=120,
    )  # fmt: skip
    trace = result.stdout + result.stderr
    oack = [line for line in trace.splitlines() if "OACK" in line]
    assert oack and "windowsize: 16" in oack[0], trace[:2000]
    assert same_file(out, rig.root / name)


def test_tftp_hpa_512_rolls_over_in_a_worker(rig, server):
    before = server.stats()
    out = rig.out / "w-big33.bin"
    rig.tftp_hpa("get", "big33.bin", str(out))
    assert same_file(out, rig.root / "big33.bin")
    after = server.stats()
    assert after["completed"] == before.get("completed", 0) + 1
    assert after.get("internal_error", 0) == 0


def test_tftp_hpa_rendered_and_netascii_files_go_through_a_memfd(rig, server):
    mac = rig.lab.run(rig.cli, ["cat", "/sys/class/net/cli0/address"]).stdout.strip()
    out = rig.out / "w-rendered"
    rig.tftp_hpa("get", "pxelinux.cfg/01-" + mac.replace(":", "-"), str(out))
    assert out.read_bytes() == rendered_config(mac.replace(":", "-"), CLIENT_IP)
    out = rig.out / "w-ascii"
    rig.tftp_hpa("get", "text.cfg", str(out), mode="ascii")
    assert out.read_bytes() == rig.source("text.cfg")


def test_parallel_clients_spread_over_the_workers(rig, server):
    before = server.stats().get("completed", 0)
    outs = [rig.out / f"w-par-{i}" for i in range(4)]  # max_per_client is 4
    script = " & ".join(
        f"curl -sS --tftp-blksize 1468 -o {out} tftp://{SERVER_IP}/boot/kernel.img" for out in outs
    )
    rig.client("sh", "-c", f"{script} & wait")
    assert all(out.read_bytes() == rig.source("boot/kernel.img") for out in outs)
    _wait(lambda: server.stats()["completed"] == before + len(outs))
    assert len(worker_pids(server)) == WORKERS


# Worker life and death -----------------------------------------------------------------------


def test_killed_worker_mid_transfer_is_replaced_and_the_server_keeps_serving(rig):
    lonely = start_server(rig, "one-worker", 1, "--port", "6975")
    sock = rig.socket()
    try:
        (victim,) = worker_pids(lonely)
        sock.sendto(_rrq("big33.bin", blksize="1468"), (SERVER_IP, 6975))
        oack, tid = sock.recvfrom(2048)
        assert oack[:2] == b"\x00\x06"
        sock.sendto(struct.pack("!HH", 4, 0), tid)
        assert sock.recvfrom(65536)[0][:4] == struct.pack("!HH", 3, 1)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: lonely.stats().get("worker_lost") == 1)
        stats = lonely.stats()
        assert stats["active"] == 0 and stats["failed"] == 1
        _wait(lambda: len(worker_pids(lonely)) == 2)
        assert worker_pids(lonely)[1] != victim and gone(victim)
        assert lonely.proc.poll() is None
        out = rig.out / "after-kill"
        rig.client(
            "curl", "-sS", "--tftp-blksize", "1468", "-o", str(out),
            f"tftp://{SERVER_IP}:6975/boot/kernel.img",
        )  # fmt: skip
        assert out.read_bytes() == rig.source("boot/kernel.img")
        assert "exited with status -9; 1 transfers lost" in lonely.log_text()
    finally:
        sock.close()
        rig.lab.stop(lonely.proc)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_a_killed_server(rig, sig):
    doomed = start_server(rig, f"doomed-{sig.name}", WORKERS, "--port", "6976")
    sock = rig.socket()
    try:
        pids = worker_pids(doomed)
        assert len(pids) == WORKERS and not any(gone(pid) for pid in pids)
        sock.sendto(_rrq("big33.bin", blksize="1468"), (SERVER_IP, 6976))
        assert sock.recvfrom(2048)[0][:2] == b"\x00\x06"  # a transfer is running in a worker
        os.kill(doomed.proc.pid, sig)  # the server alone, not its process group
        doomed.proc.wait(timeout=20)
        _wait(lambda: all(gone(pid) for pid in pids), timeout=20)
    finally:
        sock.close()
        rig.lab.stop(doomed.proc)


def test_worker_falls_back_to_one_send_per_packet_when_the_kernel_refuses_gso(rig):
    # As in test_tftp_peers: told the MTU is 9000 on a 1500 link, the server negotiates 8192-byte
    # blocks the kernel will not segment. The worker finds out and tells the server, which logs
    # it once and stops asking the next workers to try.
    wrong = start_server(rig, "w-wrong-mtu", 1, "--port", "6977", "--mtu", "9000")
    try:
        for attempt in range(2):
            out = rig.out / f"w-no-gso-{attempt}"
            rig.client(
                "atftp", "--option", "blksize 8192", "--option", "windowsize 8",
                "-g", "-r", "boot/kernel.img", "-l", str(out), SERVER_IP, "6977",
            )  # fmt: skip
            assert out.read_bytes() == rig.source("boot/kernel.img")
        assert wrong.log_text().count("UDP segmentation offload unavailable") == 1
        assert wrong.stats()["completed"] == 2
    finally:
        rig.lab.stop(wrong.proc)


def test_transfer_socket_answers_strangers_from_a_worker(rig, server):
    sock, stranger = rig.socket(), rig.socket()
    try:
        sock.sendto(_rrq("small.bin", blksize="512"), (SERVER_IP, 69))
        first, tid = sock.recvfrom(65536)
        assert first[:2] == b"\x00\x06"
        stranger.sendto(struct.pack("!HH", 4, 0), tid)
        answer, source = stranger.recvfrom(2048)
        assert source == tid and answer[:4] == struct.pack("!HH", 5, 5)
        sock.sendto(struct.pack("!HH", 5, 0) + b"done\x00", tid)
    finally:
        sock.close()
        stranger.close()


def test_refusals_still_come_from_the_server(rig, server):
    result = rig.tftp_hpa("get", "../etc/passwd", str(rig.out / "w-refused"), check=False)
    assert "Error code 2" in result.stderr + result.stdout
