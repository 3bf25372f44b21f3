"""qemu guests (TCG) on lab bridges, for end-to-end tests: PXE or direct kernel boot.

A Guest runs qemu-system-x86_64 inside a lab namespace on its own tap, a port of a bridge there,
with the serial console (SeaBIOS, iPXE and the kernel all print there) in a file read by wait_for.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal

from tests.netlab import Lab, LabError

QEMU = "qemu-system-x86_64"
NICS = ("virtio-net-pci", "e1000")
# Guest kernel modules that make each NIC an interface (virtio_net alone has no PCI transport).
NIC_MODULES = {"virtio-net-pci": ["virtio_pci", "virtio_net"], "e1000": ["e1000"]}
DEFAULT_APPEND = "console=ttyS0 panic=-1"
# CSI sequences (colours, cursor moves), resets, carriage returns and backspaces (iPXE's
# countdowns) from SeaBIOS/iPXE: stripped from the text wait_for sees.
_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc|[\r\x08]")


def wrapped(phrase: str) -> str:
    """A regex for phrase that also matches where the firmware console broke it across lines.

    SeaBIOS mirrors iPXE's screen to serial as an 80-column terminal and breaks long lines with a
    hard newline, anywhere, even mid-word ("...Firmware -- http" / "://ipxe.org"). The kernel's
    own console output (ttyS0) is not wrapped.
    """
    return "\n?".join(re.escape(char) for char in phrase)


class GuestError(Exception):
    """A guest did not start, exited, or never printed what a test waited for."""


class Guest:
    """One qemu guest: start(), wait_for(regex), stop(). Also a context manager.

    boot="pxe" uses qemu's built-in iPXE ROM for the NIC (`-boot n`; a romfile= override is
    not picked up, see LAB-FACTS). Give its bridge router_advertisements=True, or iPXE waits
    ~16 s for IPv6 after its DHCP lease. boot="kernel" passes kernel/initrd/append directly;
    use GuestKernel.vmlinux (no decompression in the guest) and keep "quiet" in append: every
    console line costs time under TCG. The guest never reboots (`-no-reboot`): a reboot, a
    poweroff or a panic (with panic=-1) ends qemu, which wait_for reports at once. qemu runs
    through Lab.spawn, so the lab's teardown kills it even if stop() is never called.
    """

    def __init__(
        self,
        lab: Lab,
        ns: str,
        bridge: str,
        mac: str,
        *,
        memory: int = 256,
        boot: Literal["pxe", "kernel"] = "pxe",
        kernel: Path | None = None,
        initrd: Path | None = None,
        append: str = DEFAULT_APPEND,
        nic: str = "virtio-net-pci",
        console_log: Path | None = None,
        tap: str | None = None,
        cpus: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        if nic not in NICS:
            raise GuestError(f"nic {nic!r}: use one of {', '.join(NICS)}")
        if boot == "kernel" and kernel is None:
            raise GuestError('boot="kernel" needs kernel=')
        if boot not in ("pxe", "kernel"):
            raise GuestError(f'boot {boot!r}: use "pxe" or "kernel"')
        if not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac.lower()):
            raise GuestError(f"mac {mac!r} is not aa:bb:cc:dd:ee:ff")
        self.lab = lab
        self.ns = ns
        self.bridge = bridge
        self.mac = mac.lower()
        self.memory = memory
        self.boot = boot
        self.kernel = kernel
        self.initrd = initrd
        self.append = append
        self.nic = nic
        self.cpus = cpus
        self.extra_args = extra_args
        # One tap per guest, named after the MAC so two guests in one namespace differ.
        self.tap = tap or "tap" + self.mac.replace(":", "")[6:]
        self.console_log = console_log or lab.workdir / f"{self.tap}.console.log"
        self.qemu_log = self.console_log.with_name(self.console_log.name + ".qemu")
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._raw = b""
        self._text = ""
        self._seen: list[tuple[int, float]] = []  # (len(text) after a read, when it was read)
        self._pos = 0
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._tap_made = False

    def __enter__(self) -> Guest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def argv(self) -> list[str]:
        netdev = f"tap,id=net0,ifname={self.tap},script=no,downscript=no"
        argv = [
            QEMU,
            "-accel", "tcg",
            "-m", str(self.memory),
            "-smp", str(self.cpus),
            "-no-reboot",
            # -nographic makes qemu tell SeaBIOS to mirror its and option ROMs' screen output
            # to the serial port; the explicit -serial/-monitor keep stdio out of it.
            "-nographic",
            "-serial", f"file:{self.console_log}",
            "-monitor", "none",
            "-netdev", netdev,
        ]  # fmt: skip
        device = f"{self.nic},netdev=net0,mac={self.mac}"
        if self.boot == "pxe":
            argv += ["-device", device, "-boot", "n"]
        else:
            # No option ROM: iPXE's "Press Ctrl-B" pause would cost ~2 s of every kernel boot.
            argv += ["-device", device + ",romfile=", "-kernel", str(self.kernel)]
            argv += ["-append", self.append]
            if self.initrd is not None:
                argv += ["-initrd", str(self.initrd)]
        return [*argv, *self.extra_args]

    def start(self, timeout: float = 10) -> Guest:
        """Create the tap, start qemu, and return once qemu has opened the tap."""
        if shutil.which(QEMU) is None:
            raise GuestError(f"{QEMU} not found: install the packages in scripts/test-packages.txt")
        if self.proc is not None:
            raise GuestError("guest already started")
        self.lab.tap(self.ns, self.tap, bridge=self.bridge, mtu=self.lab.mtu(self.ns, self.bridge))
        self._tap_made = True
        try:
            self._start_qemu(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_qemu(self, timeout: float) -> None:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(b"")
        with self._lock:
            self._raw, self._text, self._seen, self._pos = b"", "", [], 0
        self.started_at = time.monotonic()
        self.proc = self.lab.spawn(self.ns, self.argv(), self.qemu_log)
        # Reading the console every 20 ms in the background keeps seen_at() accurate however
        # the test spends its time between wait_for calls.
        self._watcher = threading.Thread(target=self._watch, args=(self.proc,), daemon=True)
        self._watcher.start()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(LabError):
                self.lab.wait_running(self.ns, self.tap, timeout=0.05)
                return
            if self.proc.poll() is not None:
                raise GuestError(
                    f"qemu exited {self.proc.returncode} at start: {self._qemu_tail()}"
                )
            if time.monotonic() > deadline:
                raise GuestError(
                    f"qemu did not open {self.tap} in {timeout} s: {self._qemu_tail()}"
                )

    @property
    def elapsed(self) -> float:
        """Seconds since qemu was started."""
        return time.monotonic() - self.started_at

    def console(self) -> str:
        """All console output so far, ANSI sequences and carriage returns removed."""
        self._read()
        return self._text

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 60) -> re.Match[str]:
        """Wait until pattern appears on the console after the previous wait_for's match.

        Raises GuestError at the timeout, or as soon as qemu exits without printing it. For
        firmware (SeaBIOS/iPXE) messages build the pattern with wrapped().
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            match = regex.search(self._text, self._pos)
            if match:
                self._pos = match.end()
                return match
            exited = self.proc is None or self.proc.poll() is not None
            if exited:
                self._read()  # qemu may have written its last lines just before exiting
                match = regex.search(self._text, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                raise GuestError(
                    f"guest exited before printing {regex.pattern!r}; console ends:\n"
                    f"{self._text[-3000:]}\nqemu: {self._qemu_tail()}"
                )
            if time.monotonic() > deadline:
                raise GuestError(
                    f"no {regex.pattern!r} on the console within {timeout} s; it ends:\n"
                    f"{self._text[-3000:]}"
                )
            time.sleep(0.02)

    def seen_at(self, match: re.Match[str]) -> float:
        """Seconds after start() at which the matched text appeared on the console (+-20 ms)."""
        for length, when in self._seen:
            if length >= match.end():
                return when - self.started_at
        return self.elapsed

    def wait_exit(self, timeout: float = 60) -> int:
        """Wait for qemu to exit by itself (the guest powered off); returns its status."""
        if self.proc is None:
            raise GuestError("guest not started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise GuestError(f"guest still running after {timeout} s") from exc

    def stop(self) -> None:
        """Kill qemu (by pid) and delete its tap, so the same guest can start again."""
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=5)
            if self._watcher is not None:
                self._watcher.join(timeout=5)
            self._read()
            self.proc = None
        if self._tap_made:
            self._tap_made = False
            with contextlib.suppress(LabError):  # already gone with its namespace
                self.lab.delete_link(self.ns, self.tap)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        while proc.poll() is None:
            self._read()
            time.sleep(0.02)
        self._read()

    def _read(self) -> None:
        with self._lock:
            self._read_locked()

    def _read_locked(self) -> None:
        try:
            with self.console_log.open("rb") as handle:
                handle.seek(len(self._raw))
                chunk = handle.read()
        except FileNotFoundError:
            return
        if chunk:
            self._raw += chunk
            # Re-cleaning the whole log keeps an escape sequence split across reads intact;
            # text before an unfinished sequence is unchanged, so positions stay valid.
            self._text = _NOISE.sub("", self._raw.decode("utf-8", errors="replace"))
            self._seen.append((len(self._text), time.monotonic()))

    def _qemu_tail(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace")[-2000:].strip() or "(no output)"
        except FileNotFoundError:
            return "(no output)"
