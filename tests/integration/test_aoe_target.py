"""The AoE target server (`cloudctl aoe serve`) in a network namespace, against real peers on a
veth: `cloudctl aoe probe` (which also sees vblade exports), raw AoE frames from a client
namespace (ACLs, 100,000 mutated frames), SIGHUP export changes, and kill -9 after a write.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    ETHERTYPE_AOE,
    FLAG_RESPONSE,
    AoeCodecError,
    AoeFrame,
    Arg,
    AtaArg,
    QueryConfigArg,
    decode_frame,
    encode_frame,
    format_mac,
)
from tests import netlab
from tests.netlab import Lab
from tests.unit.aoe import test_fuzz

pytestmark = netlab.needs_root

ALLOWED = "02:00:00:00:aa:01"  # spoofed initiator MACs for the ACL tests
STRANGER = "02:00:00:00:bb:02"
AOE_CLI = [sys.executable, "-m", "cloudctl.cli.aoe"]


class TargetProcess:
    """`cloudctl aoe serve CONFIG` inside a namespace, driven by signals, read from its log."""

    def __init__(
        self, lab: Lab, ns: str, interfaces: list[str], exports: list[dict], **settings: object
    ) -> None:
        self.lab, self.ns, self.settings = lab, ns, settings
        self.config = lab.workdir / f"target-{len(lab.namespaces)}-{time.monotonic_ns()}.json"
        self.log = self.config.with_suffix(".log")
        self.interfaces = interfaces
        self.write_config(exports)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict = {}
        self.env: dict[str, str] | None = None  # extra environment for the process

    def write_config(self, exports: list[dict]) -> None:
        config = {"interfaces": self.interfaces, "exports": exports, **self.settings}
        self.config.write_text(json.dumps(config))

    def start(self) -> TargetProcess:
        argv = [*AOE_CLI, "serve", str(self.config)]
        self.proc = self.lab.spawn(self.ns, argv, self.log, env=self.env)
        self.ready = self.wait_event("ready")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def mac(self, interface: str | None = None) -> bytes:
        for info in self.ready["interfaces"]:
            if interface is None or info["name"] == interface:
                return bytes.fromhex(info["mac"].replace(":", ""))
        raise KeyError(interface)

    def events(self) -> list[dict]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_event(self, name: str, after: int = 0, timeout: float = 15) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events()[after:] if e["event"] == name]
            if found:
                return found[0]
            assert self.proc is None or self.proc.poll() is None, self.log.read_text()
            time.sleep(0.02)
        raise AssertionError(f"no {name!r} event in {timeout} s:\n{self.log.read_text()}")

    def stats(self) -> dict:
        seen = len(self.events())
        os.kill(self.pid, signal.SIGUSR1)
        return self.wait_event("stats", after=seen)

    def reload(self, exports: list[dict]) -> dict:
        self.write_config(exports)
        seen = len(self.events())
        os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for event in self.events()[seen:]:
                if event["event"] in ("reloaded", "reload-failed"):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"no reload event:\n{self.log.read_text()}")


class Initiator:
    """Raw AoE frames from a client namespace. The socket sees every AoE frame on the veth,
    answers to spoofed source MACs included (a veth delivers frames for other hosts too)."""

    def __init__(self, lab: Lab, ns: str, interface: str) -> None:
        self.sock = lab.open_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88A2))
        self.sock.bind((interface, ETHERTYPE_AOE))
        self.mac: bytes = self.sock.getsockname()[4]
        self.next_tag = random.Random(7).randrange(1 << 30)

    def send(self, dst: bytes, major: int, minor: int, arg: Arg, src: bytes | None = None) -> int:
        self.next_tag += 1
        frame = AoeFrame(dst, src or self.mac, major, minor, self.next_tag, arg)
        self.sock.send(encode_frame(frame))
        return self.next_tag

    def wait(self, tags: set[int], timeout: float = 2.0) -> dict[int, AoeFrame]:
        """Answers carrying `tags`, until all came or the timeout passed; others are skipped."""
        answers: dict[int, AoeFrame] = {}
        deadline = time.monotonic() + timeout
        while tags - answers.keys():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                break
            try:
                frame = decode_frame(self.sock.recv(65536))
            except AoeCodecError:
                continue
            if frame.is_response and frame.tag in tags:
                answers[frame.tag] = frame
        return answers

    def request(
        self,
        dst: bytes,
        major: int,
        minor: int,
        arg: Arg,
        *,
        src: bytes | None = None,
        timeout: float = 2.0,
    ) -> AoeFrame | None:
        tag = self.send(dst, major, minor, arg, src)
        return self.wait({tag}, timeout).get(tag)


def identify() -> AtaArg:
    return AtaArg(0, 0, 1, AtaCommand.IDENTIFY_DEVICE, 0xA0 << 24)


def read(lba: int, count: int) -> AtaArg:
    return AtaArg(AFLAG_EXTENDED, 0, count, AtaCommand.READ_SECTORS_EXT, lba)


def write(lba: int, data: bytes) -> AtaArg:
    flags = AFLAG_EXTENDED | AFLAG_WRITE
    return AtaArg(flags, 0, len(data) // 512, AtaCommand.WRITE_SECTORS_EXT, lba, data)


def image(lab: Lab, name: str, size: int, data: bytes | None = None) -> Path:
    path = lab.workdir / name
    path.write_bytes(data if data is not None else bytes(size))
    return path


def export(shelf: int, slot: int, path: Path | str, **settings: object) -> dict:
    return {"shelf": shelf, "slot": slot, "path": str(path), **settings}


def probe(lab: Lab, ns: str, interface: str, timeout: float = 1.0) -> dict[str, dict]:
    argv = [*AOE_CLI, "probe", interface, "--timeout", str(timeout), "-o", "json"]
    out = lab.run(ns, argv).stdout
    return {f"{t['target']}@{t['mac']}": t for t in json.loads(out)}


@pytest.fixture
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture
def rig(lab):
    """Storage node `tgt` (tgt0) and initiator `cli` (cli0) on one veth."""
    tgt, cli = lab.netns("tgt"), lab.netns("cli")
    lab.veth(tgt, "tgt0", cli, "cli0")
    return lab, tgt, cli


def test_probe_sees_our_exports_and_vblade_and_respects_acls(rig):
    lab, tgt, cli = rig
    started = time.monotonic()
    data = random.Random(1).randbytes(4 << 20)
    cli_mac = format_mac(Initiator(lab, cli, "cli0").mac)
    exports = [
        export(1, 1, image(lab, "a.img", 0, data), config_string="vol-a"),
        export(1, 2, image(lab, "b.img", 1 << 20), allowed_macs=[cli_mac]),
        export(1, 3, image(lab, "c.img", 1 << 20), allowed_macs=[STRANGER]),
    ]
    target = TargetProcess(lab, tgt, ["tgt0"], exports).start()
    lab.spawn(tgt, ["vblade", "7", "1", "tgt0", str(image(lab, "v.img", 2 << 20))], None)
    ours, theirs = format_mac(target.mac()), None
    deadline = time.monotonic() + 10
    while theirs is None and time.monotonic() < deadline:  # vblade needs a moment to bind
        found = probe(lab, cli, "cli0")
        theirs = next((t for t in found.values() if t["target"] == "e7.1"), None)
    assert theirs is not None, "vblade never answered the probe"
    assert set(found) == {f"e1.1@{ours}", f"e1.2@{ours}", f"e7.1@{ours}"}  # e1.3: not our MAC
    a, b = found[f"e1.1@{ours}"], found[f"e1.2@{ours}"]
    assert (a["sectors"], a["config_string"], a["buffer_count"], a["max_sectors"]) == (
        8192,
        "vol-a",
        64,
        2,
    )
    assert b["sectors"] == 2048 and a["model"] == "cloudctl AoE virtual disk"
    assert (theirs["sectors"], theirs["buffer_count"], theirs["max_sectors"]) == (4096, 16, 2)
    text = lab.run(cli, [*AOE_CLI, "probe", "cli0"]).stdout
    assert re.search(r"^e1\.1\s+\S+\s+4\.0 MiB\s+8192\s+64\s+0x0001\s+2\s+vol-a$", text, re.M)
    assert re.search(r"^e7\.1\s+\S+\s+2\.0 MiB\s+4096\s+16\s", text, re.M)
    print(f"probe against our target and vblade: {time.monotonic() - started:.1f} s")


def test_jumbo_mtu_gives_17_sectors_per_frame_on_that_interface_only(lab):
    tgt, cli, big = lab.netns("tgt"), lab.netns("cli"), lab.netns("big")
    lab.veth(tgt, "tgt0", cli, "cli0")
    lab.veth(tgt, "tgt1", big, "big0", mtu=9000)
    exports = [{"shelf": 2, "slot": 1, "path": str(image(lab, "a.img", 1 << 20))}]
    target = TargetProcess(lab, tgt, ["tgt0", "tgt1"], exports).start()
    assert [(i["name"], i["mtu"], i["max_sectors"]) for i in target.ready["interfaces"]] == [
        ("tgt0", 1500, 2),
        ("tgt1", 9000, 17),
    ]
    (small,) = probe(lab, cli, "cli0").values()
    (large,) = probe(lab, big, "big0").values()
    assert (small["max_sectors"], large["max_sectors"]) == (2, 17)
    assert small["mac"] == format_mac(target.mac("tgt0"))
    assert large["mac"] == format_mac(target.mac("tgt1"))
    # A 17-sector read fits one jumbo frame.
    initiator = Initiator(lab, big, "big0")
    answer = initiator.request(target.mac("tgt1"), 2, 1, read(0, 17))
    assert answer is not None and answer.arg.cmd_status == 0x40 and len(answer.arg.data) == 8704


def test_frames_from_a_mac_outside_the_acl_get_no_answer(rig):
    lab, tgt, cli = rig
    secret = random.Random(2).randbytes(64 * 1024)
    exports = [export(3, 1, image(lab, "s.img", 0, secret), allowed_macs=[ALLOWED])]
    target = TargetProcess(lab, tgt, ["tgt0"], exports).start()
    initiator, mac = Initiator(lab, cli, "cli0"), target.mac()
    allowed = bytes.fromhex(ALLOWED.replace(":", ""))
    stranger = bytes.fromhex(STRANGER.replace(":", ""))
    ok = initiator.request(mac, 3, 1, read(0, 2), src=allowed)
    assert ok is not None and ok.dst == allowed and ok.arg.data[:1024] == secret[:1024]
    for arg in (read(0, 2), identify(), QueryConfigArg(), write(0, b"x" * 1024)):
        assert initiator.request(mac, 3, 1, arg, src=stranger, timeout=0.5) is None
    broadcast = initiator.request(b"\xff" * 6, 0xFFFF, 0xFF, QueryConfigArg(), src=stranger)
    assert broadcast is None
    assert (lab.workdir / "s.img").read_bytes() == secret  # the stranger's write went nowhere
    stats = target.stats()
    assert stats["denied"] == 5 and stats["handled"] == 1


def test_update_exports_adds_removes_and_changes_acls_without_restart(rig):
    lab, tgt, cli = rig
    initiator = Initiator(lab, cli, "cli0")
    me = format_mac(initiator.mac)
    a = {"shelf": 4, "slot": 1, "path": str(image(lab, "a.img", 1 << 20))}
    b = {"shelf": 4, "slot": 2, "path": str(image(lab, "b.img", 1 << 20))}
    c = {
        "shelf": 4,
        "slot": 3,
        "path": str(image(lab, "c.img", 1 << 20)),
        "allowed_macs": [STRANGER],
    }
    target = TargetProcess(lab, tgt, ["tgt0"], [a, b, c]).start()
    mac = target.mac()
    assert {t["target"] for t in probe(lab, cli, "cli0").values()} == {"e4.1", "e4.2"}
    # An initiator sets e4.1's config string; the reload must not lose it.
    answer = initiator.request(mac, 4, 1, QueryConfigArg(ccmd=3, config_string=b"claimed"))
    assert answer is not None and answer.arg.config_string == b"claimed"

    d = {"shelf": 4, "slot": 4, "path": str(image(lab, "d.img", 3 << 20))}
    started = time.monotonic()
    event = target.reload([a, {**c, "allowed_macs": [me]}, d])
    took = time.monotonic() - started
    assert event == {"event": "reloaded", "exports": ["e4.1", "e4.3", "e4.4"]}
    found = {t["target"]: t for t in probe(lab, cli, "cli0").values()}
    assert set(found) == {"e4.1", "e4.3", "e4.4"}
    assert found["e4.1"]["config_string"] == "claimed" and found["e4.4"]["sectors"] == 6144
    assert initiator.request(mac, 4, 2, identify(), timeout=0.5) is None  # removed: silence
    assert target.proc is not None and target.proc.poll() is None

    bad = target.reload([a, {"shelf": 4, "slot": 9, "path": "/nonexistent/x.img"}])
    assert bad["event"] == "reload-failed" and "/nonexistent/x.img" in bad["error"]
    assert {t["target"] for t in probe(lab, cli, "cli0").values()} == {"e4.1", "e4.3", "e4.4"}
    print(f"SIGHUP to reloaded event: {took * 1000:.0f} ms")


def test_sigterm_stops_every_thread_promptly_after_reads_and_writes(rig):
    lab, tgt, cli = rig
    path = image(lab, "t.img", 1 << 20)
    target = TargetProcess(lab, tgt, ["tgt0"], [export(6, 1, path)]).start()
    initiator, mac = Initiator(lab, cli, "cli0"), target.mac()
    tags = {initiator.send(mac, 6, 1, write(lba * 2, bytes([lba]) * 1024)) for lba in range(32)}
    tags |= {initiator.send(mac, 6, 1, read(lba * 2, 2)) for lba in range(32)}
    assert len(initiator.wait(tags, timeout=10)) == 64
    assert target.proc is not None
    started = time.monotonic()
    assert lab.stop(target.proc) == 0  # SIGTERM, not the SIGKILL that follows 5 s later
    took = time.monotonic() - started
    stopped = target.events()[-1]
    assert stopped["event"] == "stopped" and stopped["crashes"] == 0
    assert stopped["received"] == 64 and stopped["sent"] == 64
    assert took < 2, f"stopping took {took:.2f} s"
    print(f"SIGTERM to exit: {took * 1000:.0f} ms")


def test_100000_mutated_frames_then_the_target_still_answers(rig):
    lab, tgt, cli = rig
    # The exports the fuzz corpus aims at (tests/unit/aoe/test_fuzz.py: responder()).
    allowed = sorted(format_mac(m) for m in (test_fuzz.HOST_A, test_fuzz.HOST_B))
    exports = [
        export(0, 1, image(lab, "f1.img", 64 * 512)),
        export(0, 2, image(lab, "f2.img", 8 * 512), allowed_macs=allowed),
        export(1, 1, image(lab, "f3.img", 16 * 512), read_only=True, config_string="prefix"),
        # Outside the corpus's reach (its MAC mask edits and reservations lock us out of the
        # others): the export the pacing and the final checks talk to.
        export(9, 9, image(lab, "f4.img", 64 * 512)),
    ]
    target = TargetProcess(lab, tgt, ["tgt0"], exports).start()
    mac, initiator = target.mac(), Initiator(lab, cli, "cli0")
    seeds = [
        mac + frame[6:] if frame[:6] == test_fuzz.TARGET else frame for frame in test_fuzz.corpus()
    ]
    rng = random.Random(test_fuzz.SEED + 2)
    started, sent, aoe, refused = time.monotonic(), 0, 0, 0
    for i in range(100_000):
        frame = test_fuzz.mutate(rng, rng.choice(seeds))
        try:
            initiator.sock.send(frame)
        except OSError:  # runts and frames over the MTU never leave
            refused += 1
        else:
            sent += 1
            aoe += frame[12:14] == b"\x88\xa2"  # the others never reach an AoE socket
        if i % 500 == 499:
            # Pace by the target: its answer to this comes after every frame queued before it,
            # so the receive buffer never overflows and each frame reaches the responder.
            tag = initiator.send(mac, 9, 9, identify())
            assert initiator.wait({tag}, timeout=10), f"target stopped answering after {i} frames"
    took = time.monotonic() - started
    answer = initiator.request(mac, 9, 9, read(0, 2))
    assert answer is not None and answer.arg.cmd_status == 0x40
    assert target.proc is not None and target.proc.poll() is None
    stats = target.stats()
    assert stats["crashes"] == 0
    assert stats["dropped"] > 1000 and stats["handled"] > 10_000
    # Every AoE frame reached the responder: the mutated ones, 200 paces and the final read.
    assert stats["received"] == aoe + 200 + 1
    assert "e9.9" in {t["target"] for t in probe(lab, cli, "cli0").values()}
    print(
        f"{sent} mutated frames sent, {aoe} of them AoE ({refused} refused by the kernel) "
        f"in {took:.1f} s; "
        f"target: {json.dumps(stats)}"
    )


def _write_offset(line: str) -> int:
    """The file offset of a traced pwritev/pwritev2 (fd, [iovecs], count, offset[, flags]) or
    pwrite64 (fd, "data"..., length, offset), finished or not."""
    vectored = re.search(r"\], \d+, (\d+)(?:, \d+)?(?:\)| <unfinished)", line)
    if vectored:
        return int(vectored.group(1))
    return int(re.findall(r", \d+, (\d+)(?:\)| <unfinished)", line)[-1])


def synced_before_answered(trace: str) -> int:
    """Check an `strace -f -s 40 -xx` log of the target: every WRITE answer (sendto) left after
    an fdatasync that started after the pwrite (or pwritev) carrying the answer's data and had
    returned. Returns how many write answers it checked."""
    writes: list[tuple[int, int, int]] = []  # (start, end, line) of each completed pwrite(v)
    writing: dict[str, int] = {}  # pid -> byte offset of its unfinished pwrite(v)
    started: dict[str, int] = {}  # pid -> line where its running fdatasync started
    synced: list[tuple[int, int]] = []  # (start, end) of completed fdatasyncs
    checked = 0
    for index, line in enumerate(trace.splitlines()):
        pid = line.split()[0]
        if re.search(r"pwrite(64|v2?)\(", line) and "unfinished" in line:
            writing[pid] = _write_offset(line)
        elif re.search(r"pwrite(64|v2?)[( ]", line) and (match := re.search(r" = (\d+)$", line)):
            offset = writing.pop(pid) if "resumed" in line else None
            if offset is None:
                offset = _write_offset(line)
            writes.append((offset, offset + int(match.group(1)), index))
        elif "fdatasync(" in line and "unfinished" in line:
            started[pid] = index
        elif "fdatasync" in line and ("resumed" in line or "= 0" in line) and "= 0" in line:
            synced.append((started.pop(pid, index), index))
        elif "sendto(" in line:
            head = bytes.fromhex("".join(re.findall(r"\\x([0-9a-f]{2})", line.split('"')[1])))
            if len(head) >= 34 and head[14] & FLAG_RESPONSE and head[24] & AFLAG_WRITE:
                offset = int.from_bytes(head[28:34], "little") * 512
                written = max(at for start, end, at in writes if start <= offset < end)
                assert any(start > written and end < index for start, end in synced), line
                checked += 1
    return checked


def test_acknowledged_writes_survive_kill_9_and_were_synced_before_their_answers(rig):
    lab, tgt, cli = rig
    path = image(lab, "d.img", 4 << 20)
    target = TargetProcess(lab, tgt, ["tgt0"], [export(5, 1, path)]).start()
    trace = lab.workdir / "strace.out"
    # Attached before any write, so -f also follows the commit thread started by the first.
    strace = lab.spawn(
        tgt,
        ["strace", "-f", "-p", str(target.pid),
         "-e", "trace=pwrite64,pwritev,pwritev2,fdatasync,sendto", "-s", "40", "-xx",
         "-o", str(trace)],
        lab.workdir / "strace.log",
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while "attached" not in (lab.workdir / "strace.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, "strace did not attach"
        time.sleep(0.02)
    initiator, mac = Initiator(lab, cli, "cli0"), target.mac()
    data = random.Random(3).randbytes(256 * 1024)
    started = time.monotonic()
    for burst in range(0, len(data), 16 * 1024):  # 16 frames in flight, like an initiator
        tags = set()
        for at in range(burst, burst + 16 * 1024, 1024):
            tags.add(initiator.send(mac, 5, 1, write(at // 512, data[at : at + 1024])))
        answers = initiator.wait(tags, timeout=10)
        assert len(answers) == 16 and all(a.arg.cmd_status == 0x40 for a in answers.values())
    os.kill(target.pid, signal.SIGKILL)  # right after the last answer: no shutdown path runs
    took = time.monotonic() - started
    assert target.proc is not None
    target.proc.wait(timeout=10)
    strace.wait(timeout=10)
    assert path.read_bytes()[: len(data)] == data
    assert synced_before_answered(trace.read_text()) == 256
    print(f"256 KiB in 1 KiB writes, 16 in flight, under strace: {took:.2f} s")
