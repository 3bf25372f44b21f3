"""The AoE target's threads and sockets: one blocking reader thread per interface (receive,
hand the frame to the responder, send the answer: vblade's model) and one commit thread that
makes queued WRITEs durable and then sends their answers itself. Moves frames only; every
protocol decision stays in responder.py (and its C twin for READ/WRITE, _fastio.c), every
fdatasync in backing.py.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloudctl.aoe import ata
from cloudctl.aoe.backing import CommitGroup, FileBlockStore
from cloudctl.aoe.codec import ETHERTYPE_AOE, HEADER_LEN, AoeCodecError, max_sectors_for_mtu

if TYPE_CHECKING:
    from cloudctl.aoe.responder import Responder

try:  # the C fast path (_fastio.c), built by `pip install`; without it Python serves all
    from cloudctl.aoe._fastio import FastPath, Waker
except ImportError:  # pragma: no cover - a source tree nobody built
    FastPath = Waker = None

__all__ = ["NATIVE", "GroupCommitter", "Port", "PortError", "interface_mtu", "open_port"]

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 8 << 20
SEND_BUFFER_BYTES = 4 << 20
FRAME_BUFFER_BYTES = 64 << 10  # larger than any frame at any MTU: nothing is ever truncated
# How long a blocked recv waits before the reader looks at its stop flag (SO_RCVTIMEO): the
# bound on close(). A kernel timeout, not a Python one, so a frame costs one recv syscall.
STOP_POLL_SECONDS = 0.05
# A send that cannot get buffer space for this long is dropped (the initiator retransmits).
SEND_TIMEOUT_SECONDS = 1.0
# After a thread's loop failed unexpectedly (a bug), the pause before it serves again.
RESTART_DELAY_SECONDS = 0.05
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SIOCGIFMTU = 0x8921
# Byte offsets in an ATA answer, patched when a group commit fails after the answer was built.
_ERROR_AT = HEADER_LEN + 1
_COUNT_AT = HEADER_LEN + 2
_STATUS_AT = HEADER_LEN + 3
# AoE commands whose handling may change what the C fast path checks (MAC mask, reservation).
_COMMAND_AT = HEADER_LEN - 5
_TABLE_COMMANDS = frozenset({2, 3})
# Whether ports take READs and WRITEs in C by default: built, and not switched off with
# CLOUDCTL_AOE_NATIVE=0 (to compare, or to rule it out).
NATIVE = FastPath is not None and os.environ.get("CLOUDCTL_AOE_NATIVE", "1") != "0"

Handler = Callable[[memoryview], list[bytes | bytearray]]


class PortError(Exception):
    """An interface cannot be served; the message says which and why."""


class Port:
    """One interface: its socket, the responder's `handle` for it (swapped by the target under
    the I/O lock) and its reader thread. Counters are written by this port's threads only.

    With `native` (the C fast path, _fastio.c) the reader waits in C with the GIL released:
    in-range READs from allowed hosts are answered there and WRITEs queued there for the commit
    thread; every other frame comes back to the responder here. `install` keeps the C export
    table in line with the responder."""

    def __init__(
        self, name: str, sock: socket.socket, mac: bytes, mtu: int, *, native: bool = NATIVE
    ) -> None:
        self.name = name
        self.sock = sock
        self.mac = mac
        self.mtu = mtu
        self.responder: Responder | None = None  # its handle() is what the reader calls
        self.handle: Handler | None = None
        self.native = FastPath(mac) if native and FastPath is not None else None
        # Stores by descriptor, for the C queue's writes (kept until the store is closed).
        self.native_stores: dict[int, FileBlockStore] = {}
        self.sent = self.send_errors = self.crashes = 0
        self.write_sent = self.write_send_errors = 0  # by the commit thread
        self._buf = bytearray(FRAME_BUFFER_BYTES)
        self._view = memoryview(self._buf)
        self._out = bytearray(FRAME_BUFFER_BYTES) if self.native is not None else None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self, lock: threading.Lock, group: CommitGroup, committer: GroupCommitter) -> None:
        committer.attach(self)
        self._thread = threading.Thread(
            target=self._serve,
            args=(lock, group, committer),
            name=f"aoe-read-{self.name}",
            daemon=True,  # close() joins it; daemon only so a lost target cannot hang exit
        )
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the reader to stop; it does within STOP_POLL_SECONDS."""
        self._stopping = True

    def stop(self) -> None:
        """Stop reading and wait for the thread; the socket stays open for the commit
        thread's answers."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def install(self, responder: Responder) -> None:
        """Serve with `responder` from the next frame on. The caller holds the I/O lock; once
        this returns the C path uses no store of the previous responder."""
        self.responder = responder
        self.handle = responder.handle
        if self.native is not None:
            self._native_table()

    def _native_table(self) -> None:
        assert self.native is not None and self.responder is not None
        max_sectors, exports, stores = self.responder.native_table()
        self.native.set_exports(max_sectors, exports)
        known = {**self.native_stores, **stores}
        self.native_stores = {fd: s for fd, s in known.items() if s.read_fd == fd}

    def native_counters(self) -> dict[str, int]:
        """The C path's counters (answered READs, queued writes, sent, send_errors,
        fallbacks); zeros without it."""
        if self.native is None:
            return dict.fromkeys(("answered", "writes", "sent", "send_errors", "fallbacks"), 0)
        return self.native.counters()

    def send_write_answer(self, answer: bytes | bytearray) -> None:
        """Send from the commit thread (its own counters: no lost updates between threads)."""
        try:
            self.sock.send(answer)
        except OSError as exc:
            # ENOBUFS (the device queue dropped it), ENETDOWN, the send timeout...: the
            # initiator retransmits, and the rewrite is committed again.
            self.write_send_errors += 1
            log.debug("AoE send on %s failed: %s", self.name, exc)
        else:
            self.write_sent += 1

    # --- the reader thread --------------------------------------------------------------------

    def _serve(self, lock: threading.Lock, group: CommitGroup, committer: GroupCommitter) -> None:
        while not self._stopping:
            try:
                self._read_loop(lock, group, committer)
            except Exception:  # a bug in this loop: say so, count it, serve on
                self.crashes += 1
                log.exception("AoE reader on %s failed; restarting it", self.name)
                time.sleep(RESTART_DELAY_SECONDS)

    def _read_loop(
        self, lock: threading.Lock, group: CommitGroup, committer: GroupCommitter
    ) -> None:
        buf, view = self._buf, self._view
        recv_into, send = self.sock.recv_into, self.sock.send
        add_writes = committer.add
        native, fd, out = self.native, self.sock.fileno(), self._out
        while not self._stopping:
            try:
                if native is not None:
                    # READs are answered and WRITEs queued in there; a frame for Python
                    # returns its length, a receive timeout 0 (look at the stop flag).
                    n = native.serve(fd, buf, out)
                    if not n:
                        continue
                else:
                    n = recv_into(buf)
            except (BlockingIOError, InterruptedError):  # SO_RCVTIMEO: look at the stop flag
                continue
            except OSError as exc:  # e.g. ENETDOWN while the link flaps
                if self._stopping:
                    return
                log.warning("AoE receive on %s failed: %s", self.name, exc)
                time.sleep(RESTART_DELAY_SECONDS)
                continue
            with lock:
                handle = self.handle
                if handle is None:
                    continue
                writes = group.writes
                try:
                    answers = handle(view[:n])
                except Exception:  # handle() promises not to raise; a bug must not stop us
                    self.crashes += 1
                    log.exception("AoE responder failed on a %d-byte frame from %s", n, self.name)
                    continue
                if group.writes != writes:
                    # A WRITE was queued: its answer leaves from the commit thread, after the
                    # fdatasync that covers it.
                    add_writes(self, answers, group.last_store, buf[_COUNT_AT])
                    continue
                if native is not None and n > _COMMAND_AT and buf[_COMMAND_AT] in _TABLE_COMMANDS:
                    self._native_table()
            for answer in answers:
                try:
                    send(answer)
                except OSError as exc:
                    self.send_errors += 1
                    log.debug("AoE send on %s failed: %s", self.name, exc)
                else:
                    self.sent += 1


class _LockWaker:
    """The Waker (_fastio.c) in Python, for a build without the extension: a bare lock that
    the commit thread blocks on and `wake` releases. arm and wake run under the I/O lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held while nobody woke the thread
        self._armed = False

    def arm(self) -> None:
        self._armed = True

    def wake(self) -> None:
        if self._armed:
            self._armed = False
            self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()


class GroupCommitter:
    """The commit thread. Readers queue WRITEs: in Python with `add` (holding the I/O lock),
    or in C (ports answering in C, `attach`ed); either wakes the thread. It takes everything
    waiting (pwritev under the lock), fdatasyncs outside it while the readers go on, then sends
    the group's answers. WRITEs that arrive meanwhile form the next group.

    The thread arms its waker before it looks for work and sleeps on it when there is none:
    a WRITE queued after the look wakes it (an eventfd from C, or a bare lock in Python: two C
    calls per group, where a Condition costs a new lock and Python bookkeeping per wait).
    `groups` counts commit cycles, `largest_group` the most answers in one, `busy_seconds` the
    time from take to the last answer sent, summed."""

    def __init__(self, lock: threading.Lock, group: CommitGroup) -> None:
        self._lock = lock  # the I/O lock: guards _waiting, _stopping and arming
        self.waker = Waker() if Waker is not None else _LockWaker()
        self._group = group
        self._waiting: list[tuple[Port, bytes | bytearray, FileBlockStore | None, int]] = []
        self._ports: list[Port] = []  # those answering in C: their queues are taken too
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.groups = self.largest_group = self.crashes = 0
        self.busy_seconds = 0.0

    def attach(self, port: Port) -> None:
        """Take `port`'s C write queue with every group. Before the port's reader starts."""
        if port.native is not None:
            port.native.set_waker(self.waker)
            self._ports.append(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="aoe-commit", daemon=True)
        self._thread.start()

    def add(
        self,
        port: Port,
        answers: list[bytes | bytearray],
        store: FileBlockStore | None,
        count: int,
    ) -> None:
        """Queue write answers for the next commit. The caller holds the I/O lock."""
        for answer in answers:
            self._waiting.append((port, answer, store, count))
        self.waker.wake()

    def settle(self, rounds: int = 1 << 30) -> None:
        """Block until no write answer waits for a commit, or `rounds` commits ended. Two
        rounds cover every write made before the call: the running commit, and the one that
        takes what waited meanwhile (more could starve under a steady stream of writes).
        Polls: it runs on export changes only, and the hot path then needs no notification."""
        until = self.groups + rounds
        while (
            (self._waiting or self._busy or self._native_queued())
            and self.groups < until
            and self.alive
        ):
            time.sleep(0.001)

    def _native_queued(self) -> list[Port]:
        return [port for port in self._ports if port.native.queued()]

    def stop(self) -> None:
        """Commit and answer what waits, then end the thread. Call after the readers stopped."""
        with self._lock:
            self._stopping = True
            self.waker.wake()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            try:
                if not self._cycle():
                    return
            except Exception:  # a bug: say so, count it, commit on
                self.crashes += 1
                log.exception("AoE commit thread failed; restarting it")
                time.sleep(RESTART_DELAY_SECONDS)

    def _cycle(self) -> bool:
        group = self._group
        # Per port: its C batch, the descriptors written, and the stores of those written
        # whole (the ones the sync may make durable).
        batches: list[tuple[Port, Any, list[int], dict[int, FileBlockStore]]] = []
        with self._lock:
            self.waker.arm()  # before looking: a WRITE queued from here on wakes the thread
            natives = self._native_queued()
            if not self._waiting and not natives:
                if self._stopping:
                    return False
                answers = None
            else:
                answers, self._waiting = self._waiting, []
                self._busy = True
                started = time.perf_counter()
                try:
                    for port in natives:
                        batch, written, unwritten = port.native.take_writes()
                        known = port.native_stores
                        whole = {
                            fd: known[fd] for fd in written if fd in known and fd not in unwritten
                        }
                        batches.append((port, batch, written, whole))
                    # Readers wait meanwhile: reads see these writes.
                    stores: list[FileBlockStore] | None = group.take()
                except Exception:  # a bug: nothing is known durable.
                    self.crashes += 1
                    log.exception("AoE commit failed to write out its group")
                    stores = None
        if answers is None:
            self.waker.wait()  # until a WRITE is queued, or stop()
            return True
        failed: set[FileBlockStore] | None = None
        if stores is not None:
            syncing = dict.fromkeys(stores)
            for _, _, _, whole in batches:
                syncing.update(dict.fromkeys(whole.values()))
            try:
                failed = group.sync(list(syncing))
            except Exception:
                self.crashes += 1
                log.exception("AoE commit failed to sync its group")
        self._finish(answers, failed, started, batches)
        return True

    def _finish(
        self,
        answers: list[tuple[Port, bytes | bytearray, FileBlockStore | None, int]],
        failed: set[FileBlockStore] | None,
        started: float,
        batches: list[tuple[Port, Any, list[int], dict[int, FileBlockStore]]],
    ) -> None:
        if failed is None:
            for port, answer, _, count in answers:
                _fail_write_answer(answer, count)
                port.send_write_answer(answer)
        elif failed:
            for port, answer, store, count in answers:
                if store in failed:
                    _fail_write_answer(answer, count)
                port.send_write_answer(answer)
        else:
            for port, answer, _, _ in answers:
                port.send_write_answer(answer)
        size = len(answers)
        for port, batch, written, whole in batches:
            # Answered as ATA errors: writes that failed, stores whose sync failed or that
            # nobody knows (not synced: never acknowledge them).
            bad = [fd for fd in written if failed is None or fd not in whole or whole[fd] in failed]
            size += port.native.finish(port.sock.fileno(), batch, bad)
        self.groups += 1
        if size > self.largest_group:
            self.largest_group = size
        self.busy_seconds += time.perf_counter() - started
        self._busy = False


def _fail_write_answer(answer: bytes | bytearray, count: int) -> None:
    # The data may not be on stable storage: turn the acknowledgement into an ATA error, with
    # the registers the responder uses for a failed write.
    assert isinstance(answer, bytearray)
    answer[_ERROR_AT] = ata.ERROR_ABRT
    answer[_COUNT_AT] = count
    answer[_STATUS_AT] = ata.STATUS_DRDY | ata.STATUS_ERR


# --- sockets ----------------------------------------------------------------------------------


def open_port(name: str, *, native: bool = NATIVE) -> Port:
    """A blocking AF_PACKET socket for AoE on `name`, with large buffers and kernel timeouts
    (SO_RCVTIMEO lets the reader see a stop; SO_SNDTIMEO bounds a send into a full queue)."""
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    try:
        sock = socket.socket(socket.AF_PACKET, kind, socket.htons(ETHERTYPE_AOE))
    except PermissionError:
        raise PortError("AF_PACKET sockets need root (or CAP_NET_RAW)") from None
    try:
        try:
            sock.bind((name, ETHERTYPE_AOE))
        except OSError as exc:
            raise PortError(f"cannot serve AoE on {name!r}: {exc.strerror}") from None
        _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(STOP_POLL_SECONDS))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(SEND_TIMEOUT_SECONDS))
        mac = sock.getsockname()[4]
        if len(mac) != 6 or mac == bytes(6):
            raise PortError(f"{name} has no Ethernet address")
        return Port(name, sock, mac, interface_mtu(sock, name), native=native)
    except BaseException:
        sock.close()
        raise


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def _grow_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # root: past net.core.[rw]mem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def interface_mtu(sock: socket.socket, name: str) -> int:
    """The MTU of `name` in the socket's own network namespace.

    Asked through the socket (SIOCGIFMTU) rather than /sys/class/net/NAME/mtu: /sys shows the
    namespace it was mounted in, which for a process that entered a namespace with setns (not
    `ip netns exec`) is another one, where NAME may exist with another MTU.
    """
    request = struct.pack("16si12x", name.encode()[:15], 0)
    try:
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFMTU, request)
    except OSError as exc:
        raise PortError(f"cannot read the MTU of {name}: {exc.strerror}") from None
    mtu = struct.unpack_from("16si", reply)[1]
    try:
        max_sectors_for_mtu(mtu)
    except AoeCodecError as exc:
        raise PortError(f"{name}: {exc}") from None
    return mtu
