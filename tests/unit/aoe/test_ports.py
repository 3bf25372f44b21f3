"""The target's threads (ports.py) over a datagram socketpair instead of an AF_PACKET socket: a
reader thread and the commit thread serve a real responder and file store; WRITE answers leave
only after the fdatasync that covers them; a crash in either thread is logged, counted and
served through; stopping leaves no thread behind. Each test runs with READs answered by the C
fast path (_fastio.c) and with everything in Python."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from cloudctl.aoe import ports
from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.backing import CommitGroup, FileBlockStore
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    AoeFrame,
    AtaArg,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    MaskDirectiveCommand,
    decode_frame,
)
from cloudctl.aoe.codec import encode_frame as encode
from cloudctl.aoe.ports import GroupCommitter, Port
from cloudctl.aoe.responder import Export, Responder

TARGET = bytes.fromhex("020000000001")
HOST = bytes.fromhex("525400000001")
STRANGER = bytes.fromhex("525400000009")
SECTORS = 256


class Rig:
    """A port, the commit thread and a client socket; `events` records fdatasyncs and write
    answers in the order they happen."""

    def __init__(self, path, monkeypatch, native: bool) -> None:
        self.events: list[str] = []
        real_sync = os.fdatasync

        def syncing(fd: int) -> None:
            real_sync(fd)
            self.events.append("sync")

        monkeypatch.setattr(os, "fdatasync", syncing)
        self.lock = threading.Lock()
        self.group = CommitGroup()
        self.store = FileBlockStore(path, group=self.group)
        self.responder = Responder(
            {Export(0, 1, SECTORS): self.store}, target_mac=TARGET, max_sectors_per_frame=2
        )
        ours, self.client = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, ports._timeval(0.05))
        self.client.settimeout(5)
        self.port = Port("pair0", ours, TARGET, 1500, native=native)
        self.port.install(self.responder)
        real_answer = self.port.send_write_answer

        def answering(answer: bytes | bytearray) -> None:
            self.events.append("answer")
            real_answer(answer)

        self.port.send_write_answer = answering  # type: ignore[method-assign]
        if self.port.native is not None:  # WRITEs queued in C are answered by finish()
            self.port.native = RecordingFastPath(self.port.native, self.events)
        self.committer = GroupCommitter(self.lock, self.group)
        self.committer.start()
        self.port.start(self.lock, self.group, self.committer)
        self.tag = 0

    def send(self, arg: AtaArg | MacMaskArg, src: bytes = HOST) -> int:
        self.tag += 1
        self.client.send(encode(AoeFrame(TARGET, src, 0, 1, self.tag, arg)))
        return self.tag

    def sent(self) -> int:
        """Answers sent, by the reader or the commit thread, in Python or in C."""
        return self.port.sent + self.port.write_sent + self.port.native_counters()["sent"]

    def answers(self, count: int) -> dict[int, AoeFrame]:
        got = {}
        while len(got) < count:
            frame = decode_frame(self.client.recv(65536))
            got[frame.tag] = frame
        return got

    def close(self) -> None:
        self.port.stop()
        self.committer.stop()
        self.port.sock.close()
        self.client.close()
        self.store.close()


class RecordingFastPath:
    """A port's FastPath that records each WRITE answer it sends, once they are sent."""

    def __init__(self, real, events: list[str]) -> None:
        self._real, self._events = real, events

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def finish(self, sock: int, batch, failed) -> int:
        count = self._real.finish(sock, batch, failed)
        self._events.extend(["answer"] * count)
        return count


@pytest.fixture(params=(True, False), ids=("c", "python"))
def rig(request, tmp_path, monkeypatch):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(SECTORS * 512))
    rig = Rig(path, monkeypatch, request.param)
    yield rig
    rig.close()


def write(lba: int, data: bytes) -> AtaArg:
    return AtaArg(
        AFLAG_EXTENDED | AFLAG_WRITE, 0, len(data) // 512, AtaCommand.WRITE_SECTORS_EXT, lba, data
    )


def read(lba: int, count: int) -> AtaArg:
    return AtaArg(AFLAG_EXTENDED, 0, count, AtaCommand.READ_SECTORS_EXT, lba)


def test_writes_are_answered_after_their_fdatasync_and_reads_see_them(rig):
    data = os.urandom(64 * 1024)
    tags = [rig.send(write(at // 512, data[at : at + 1024])) for at in range(0, len(data), 1024)]
    answers = rig.answers(len(tags))
    assert all(answers[t].arg.cmd_status == 0x40 for t in tags)
    # The commit thread counts a group after sending its answers: let it finish counting.
    rig.committer.settle()
    assert rig.events[0] == "sync" and rig.events.count("answer") == 64
    # Each answer follows a sync, and the groups are what the counters say.
    assert rig.committer.groups == rig.events.count("sync") == rig.group.commits
    assert rig.committer.largest_group >= 1 and rig.sent() == 64
    # With the C path the WRITEs never reached Python; without it, none was queued in C.
    assert rig.port.native_counters()["writes"] == (64 if rig.port.native else 0)
    rig.send(read(10, 2))
    (answer,) = rig.answers(1).values()
    assert answer.arg.data == data[5120:6144]
    # The reader counts an answer once send() returns, which may be after it arrived here.
    deadline = time.monotonic() + 5
    while rig.sent() < 65 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert rig.sent() == 65 and rig.port.crashes == rig.committer.crashes == 0
    # With the C path the READ never reached Python; without it, nothing was answered in C.
    assert rig.port.native_counters()["answered"] == (1 if rig.port.native else 0)


def test_a_crash_in_the_responder_is_logged_counted_and_served_through(rig, caplog):
    real = rig.port.handle

    def flaky(frame):
        if bytes(frame[-4:]) == b"BOOM":
            raise RuntimeError("bug")
        return real(frame)

    rig.port.handle = flaky
    # IDENTIFY: the C path hands it to Python, whatever the trailing bytes.
    identify = AtaArg(0, 0, 1, AtaCommand.IDENTIFY_DEVICE, 0)
    rig.client.send(encode(AoeFrame(TARGET, HOST, 0, 1, 99, identify)) + b"BOOM")
    tag = rig.send(read(0, 1))
    assert list(rig.answers(1)) == [tag]
    assert rig.port.crashes == 1 and rig.port.alive
    assert "AoE responder failed" in caplog.text and "RuntimeError: bug" in caplog.text


def test_a_crash_in_the_commit_fails_its_writes_and_the_next_group_commits(
    rig, monkeypatch, caplog
):
    real_take, calls = rig.group.take, []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug in take")
        return real_take()

    monkeypatch.setattr(rig.group, "take", broken_once)
    rig.send(write(0, b"a" * 1024))
    (first,) = rig.answers(1).values()
    assert first.arg.cmd_status & 0x01  # ERR: nothing is known durable, not acknowledged
    rig.send(write(0, b"b" * 1024))
    (second,) = rig.answers(1).values()
    assert second.arg.cmd_status == 0x40
    assert rig.committer.crashes == 1 and rig.committer.alive
    assert "RuntimeError: bug in take" in caplog.text


def test_stop_ends_both_threads_promptly_and_commits_what_waits(rig):
    tags = {rig.send(write(lba * 2, bytes([lba]) * 1024)) for lba in range(8)}
    assert set(rig.answers(len(tags))) == tags
    started = time.monotonic()
    rig.port.stop()
    rig.committer.stop()
    took = time.monotonic() - started
    assert not rig.port.alive and not rig.committer.alive
    assert took < 1.0, f"stopping took {took:.2f} s"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("aoe-")]


def test_settle_returns_once_nothing_waits(rig):
    rig.send(write(0, b"x" * 1024))
    rig.answers(1)
    started = time.monotonic()
    rig.committer.settle()
    assert time.monotonic() - started < 1.0


def test_a_mac_mask_edit_holds_for_the_next_read(rig):
    rig.send(read(0, 1), STRANGER)
    assert len(rig.answers(1)) == 1  # the export serves every host
    add = MacMaskArg(MaskCommand.EDIT, 0, (MaskDirective(MaskDirectiveCommand.ADD, HOST),))
    rig.send(add)
    assert len(rig.answers(1)) == 1
    rig.send(read(0, 1), STRANGER)  # no longer on the list: no answer at all
    tag = rig.send(read(0, 1))
    assert list(rig.answers(1)) == [tag]
    rig.client.settimeout(0.3)
    with pytest.raises(TimeoutError):
        rig.client.recv(65536)
