"""The TFTP server's transfer workers, from the server's side: starts worker processes, hands each
new transfer to the least busy one (its socket and file go as descriptors over a socketpair),
turns their reports into callbacks, and restarts a worker that dies (its transfers are lost).

Why processes: with one ACK per block, a transfer costs several microseconds of CPU per block,
and one asyncio thread is one core; the workers run the same `ReadSession` on every core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cloudctl.pxe.tftp.handoff import (
    GsoRefused,
    Handoff,
    HandoffError,
    Ready,
    Report,
    decode_message,
    encode_message,
)

__all__ = ["HandedTransfer", "WorkerPool", "WorkerStartError", "memfd_of"]

log = logging.getLogger(__name__)

# A worker imports the session and codec before it says it is ready; a loaded machine is slow.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
# A worker that dies this soon after starting is not restarted at once: a worker that cannot
# run must not turn into a fork loop.
CRASH_LOOP_S = 1.0
RESTART_DELAY_S = 1.0
REPORT_SIZE = 64 * 1024
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the directory holding cloudctl/


class WorkerStartError(Exception):
    """The transfer workers did not start; the message says why."""


class _Worker:
    """One worker process and the transfers it runs now."""

    __slots__ = ("control", "proc", "ready", "slot", "started", "transfers")

    def __init__(self, slot: int, proc: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.slot = slot
        self.proc = proc
        self.control: socket.socket | None = control
        self.started = time.monotonic()
        self.transfers: set[int] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class WorkerPool:
    """`count` worker processes. Callbacks: `on_report(report)` when a transfer ends,
    `on_lost(transfer_id)` for each transfer of a worker that died, `on_gso_refused(reason)`."""

    def __init__(
        self,
        count: int,
        *,
        on_report: Callable[[Report], None],
        on_lost: Callable[[int], None],
        on_gso_refused: Callable[[str], None],
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self.restarts = 0
        self._on_report = on_report
        self._on_lost = on_lost
        self._on_gso_refused = on_gso_refused
        self._workers: list[_Worker | None] = [None] * count
        self._restart_handles: dict[int, asyncio.TimerHandle] = {}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pids(self) -> list[int]:
        """PIDs of the worker processes running now."""
        return [w.proc.pid for w in self._workers if w is not None and w.control is not None]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            for slot in range(self.count):
                self._spawn(slot)
            ready = [w.ready for w in self._workers if w is not None]
            await asyncio.wait_for(asyncio.gather(*ready), START_TIMEOUT_S)
        except (OSError, TimeoutError, WorkerStartError) as exc:
            await self.close()
            raise WorkerStartError(f"TFTP transfer workers did not start: {exc!r}") from None

    async def close(self) -> None:
        """EOF to every worker, then wait for them (SIGKILL by PID after STOP_TIMEOUT_S)."""
        self._closing = True
        for handle in self._restart_handles.values():
            handle.cancel()
        self._restart_handles.clear()
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.count
        for worker in workers:
            self._disconnect(worker)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in workers:
            while worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if worker.proc.poll() is None:
                log.warning("TFTP worker %d did not stop: killed", worker.proc.pid)
                worker.proc.kill()
                worker.proc.wait()

    def hand_off(self, handoff: Handoff, sock_fd: int, file_fd: int) -> bool:
        """Give a transfer to the least busy worker; False if none could take it. The caller
        keeps (and closes) its own descriptors: the worker gets copies."""
        live = [w for w in self._workers if w is not None and w.control is not None]
        if not live:
            return False
        worker = min(live, key=lambda w: len(w.transfers))
        assert worker.control is not None
        try:
            socket.send_fds(
                worker.control, [encode_message(handoff)], [sock_fd, file_fd], socket.MSG_DONTWAIT
            )
        except OSError as exc:  # its queue is full (it is stuck), or it just died
            log.warning("cannot hand a transfer to TFTP worker %d: %s", worker.proc.pid, exc)
            return False
        worker.transfers.add(handoff.transfer_id)
        return True

    # -- worker processes -----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        assert self._loop is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            # The worker imports cloudctl from where this server did, installed or not.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p
            )
            argv = [sys.executable, "-m", "cloudctl.pxe.tftp.worker"]
            proc = subprocess.Popen(
                [*argv, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = _Worker(slot, proc, ours)
        self._workers[slot] = worker
        self._loop.add_reader(ours.fileno(), self._on_readable, worker)
        log.info("TFTP transfer worker %d started (PID %d)", slot, proc.pid)

    def _on_readable(self, worker: _Worker) -> None:
        control = worker.control
        while control is not None:
            try:
                data = control.recv(REPORT_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost(worker)
                return
            try:
                message = decode_message(data)
            except HandoffError as exc:
                log.error("TFTP worker %d: %s", worker.proc.pid, exc)
                continue
            if isinstance(message, Report):
                worker.transfers.discard(message.transfer_id)
                self._on_report(message)
            elif isinstance(message, GsoRefused):
                self._on_gso_refused(message.reason)
            elif isinstance(message, Ready) and not worker.ready.done():
                worker.ready.set_result(None)

    def _disconnect(self, worker: _Worker) -> None:
        if worker.control is not None:
            assert self._loop is not None
            self._loop.remove_reader(worker.control.fileno())
            worker.control.close()  # the worker sees EOF and exits
            worker.control = None

    def _lost(self, worker: _Worker) -> None:
        """The worker's end of the socketpair closed: it died (or is dying). Reap it by PID."""
        self._disconnect(worker)
        proc = worker.proc
        try:
            status = proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:  # closed its socket but lingers: it is of no use
            proc.kill()
            status = proc.wait()
        lost = sorted(worker.transfers)
        worker.transfers.clear()
        if not worker.ready.done():
            worker.ready.set_exception(WorkerStartError(f"worker exited with status {status}"))
            worker.ready.exception()  # retrieved: only start() waits for it
        if self._closing or self._workers[worker.slot] is not worker:
            return
        self._workers[worker.slot] = None
        log.warning(
            "TFTP transfer worker %d (PID %d) exited with status %d; %d transfers lost",
            worker.slot,
            proc.pid,
            status,
            len(lost),
        )
        for transfer_id in lost:
            self._on_lost(transfer_id)
        ran = time.monotonic() - worker.started
        delay = 0.0 if ran >= CRASH_LOOP_S else RESTART_DELAY_S
        assert self._loop is not None
        handle = self._loop.call_later(delay, self._restart, worker.slot)
        self._restart_handles[worker.slot] = handle

    def _restart(self, slot: int) -> None:
        self._restart_handles.pop(slot, None)
        if self._closing:
            return
        try:
            self._spawn(slot)
        except OSError as exc:
            log.error("cannot restart TFTP transfer worker %d: %s; retrying", slot, exc)
            assert self._loop is not None
            self._restart_handles[slot] = self._loop.call_later(
                RESTART_DELAY_S, self._restart, slot
            )
            return
        self.restarts += 1


class HandedTransfer:
    """A transfer running in a worker process: what the caps and the log need of it."""

    __slots__ = ("client_ip", "key", "name", "started", "transfer_id")

    def __init__(self, transfer_id: int, peer: tuple[str, int], name: str) -> None:
        self.transfer_id = transfer_id
        self.key = peer
        self.client_ip = peer[0]
        self.name = name
        self.started = time.monotonic()


def memfd_of(content: bytes) -> int:
    """An anonymous in-memory file holding `content`, to pass a rendered file to a worker."""
    fd = os.memfd_create("cloudctl-tftp", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as file:
            file.write(content)
    except BaseException:
        os.close(fd)
        raise
    return fd
