"""The mirror agent of a node that uses mirrored volumes (`cloudctl storage mirror-agent`).

md RAID1 runs on the initiator, so only the node that assembled a mirror knows its state. Every
few seconds the agent reads /proc/mdstat, reports each of its volumes' arrays to cloudctld, and
acts on the legs cloudctld has marked: a leg failed for maintenance is failed and removed here
before its storage node stops exporting it (so I/O never waits for the AoE timeout), and a leg
that is exported again is re-added, md resyncing only what the bitmap says changed.
`decide` is pure; MirrorAgent moves its decisions to and from the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudctl.aoe.mirror import MdArray, MdStat, MirrorError, parse_mdstat

log = logging.getLogger(__name__)

READD_BACKOFF_SECONDS = 10.0  # a leg that keeps failing is not re-added in a tight loop


@dataclass(frozen=True)
class LegView:
    device: str  # "e1.0"
    snode: str
    state: str  # active | failed | resyncing | unexported (cloudctld's view)

    @property
    def path(self) -> str:
        return f"/dev/etherd/{self.device}"


@dataclass(frozen=True)
class VolumeView:
    name: str
    legs: tuple[LegView, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeView:
        return cls(
            data["name"],
            tuple(LegView(leg["device"], leg["snode"], leg["state"]) for leg in data["legs"]),
        )


@dataclass(frozen=True)
class ArrayReport:
    """One volume's array as this node sees it; members: device -> present|faulty|missing."""

    volume: str
    array: str | None  # kernel name (md127); None: not assembled here
    members: Mapping[str, str] = field(default_factory=dict)
    degraded: bool = False
    sync: Mapping[str, Any] | None = None  # {"action", "percent", "finish_s"}

    @property
    def clean(self) -> bool:
        return (
            self.array is not None
            and not self.degraded
            and self.sync is None
            and all(state == "present" for state in self.members.values())
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "array": self.array,
            "members": dict(self.members),
            "degraded": self.degraded,
            "sync": dict(self.sync) if self.sync is not None else None,
            "clean": self.clean,
        }


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    fallback: tuple[str, ...] | None = None  # run when argv fails (re-add -> add)
    volume: str = ""
    device: str = ""


def _member_device(name: str) -> str:
    """mdstat's "etherd/e1.0" (or sysfs's "etherd!e1.0") -> "e1.0"."""
    return name.replace("!", "/").removeprefix("/dev/").removeprefix("etherd/")


def _members(array: MdArray) -> dict[str, str]:
    found = {}
    for member in array.members:
        if member.device is not None:
            found[_member_device(member.device)] = "faulty" if member.faulty else "present"
    return found


def decide(
    mdstat: MdStat,
    md_names: Mapping[str, str],
    volumes: Sequence[VolumeView],
    device_present: Callable[[str], bool],
) -> tuple[list[ArrayReport], list[Command]]:
    """What to report and which mdadm commands to run, for the mirrored volumes of this node.

    md_names maps md names (/dev/md/NAME) to kernel names (md127); device_present(path) says
    whether an AoE device node exists now (its export is back).
    """
    arrays = {array.device: array for array in mdstat.arrays}
    reports, commands = [], []
    for volume in volumes:
        if len(volume.legs) != 2:
            continue
        kernel = md_names.get(volume.name)
        array = arrays.get(kernel) if kernel else None
        if array is None:
            reports.append(ArrayReport(volume.name, None))
            continue
        members = _members(array)
        md = f"/dev/md/{volume.name}"
        report_members = {}
        for leg in volume.legs:
            state = members.get(leg.device, "missing")
            report_members[leg.device] = state
            if leg.state == "failed":
                if state == "present":
                    commands.append(Command(("mdadm", md, "--fail", leg.path), None, volume.name))
                if state != "missing":
                    commands.append(Command(("mdadm", md, "--remove", leg.path), None, volume.name))
            elif state == "faulty":
                # Failed by md itself (the leg's export vanished): make room to re-add it.
                commands.append(Command(("mdadm", md, "--remove", leg.path), None, volume.name))
            elif state == "missing" and leg.state != "unexported" and device_present(leg.path):
                commands.append(
                    Command(
                        ("mdadm", md, "--re-add", leg.path),
                        ("mdadm", md, "--add", leg.path),
                        volume.name,
                        leg.device,
                    )
                )
        sync = None
        if array.sync is not None:
            sync = {
                "action": array.sync.action,
                "percent": array.sync.percent,
                "finish_s": array.sync.finish_s,
            }
        reports.append(ArrayReport(volume.name, kernel, report_members, array.degraded, sync))
    return reports, commands


class LocalMachine:
    """The node itself: /proc/mdstat, /dev/md and mdadm."""

    def mdstat(self) -> str:
        return Path("/proc/mdstat").read_text() if Path("/proc/mdstat").exists() else ""

    def md_names(self) -> dict[str, str]:
        names = {}
        md_dir = Path("/dev/md")
        if md_dir.is_dir():
            for link in md_dir.iterdir():
                names[link.name] = Path(os.path.realpath(link)).name
        return names

    def device_present(self, path: str) -> bool:
        return os.path.exists(path)

    def discover(self) -> None:
        """Ask the aoe driver to look for targets again (one came back)."""
        with contextlib.suppress(OSError):
            Path("/dev/etherd/discover").write_text("\n")

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        return done.returncode, (done.stderr or done.stdout).strip()


class MirrorAgent:
    """Report, act, repeat. `exchange(reports)` posts the reports and returns this node's
    volumes (JSON); `machine` reads md state and runs mdadm."""

    def __init__(
        self,
        exchange: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        machine: Any,
        *,
        interval: float = 2.0,
    ) -> None:
        self.exchange = exchange
        self.machine = machine
        self.interval = interval
        self.volumes: list[VolumeView] = []
        self._readded: dict[tuple[str, str], float] = {}

    def once(self) -> list[ArrayReport]:
        """One round: read, act, report (after acting, so cloudctld sees the result)."""
        try:
            mdstat = parse_mdstat(self.machine.mdstat())
        except MirrorError as exc:
            log.warning("cannot read /proc/mdstat: %s", exc)
            mdstat = MdStat((), ())
        reports, commands = decide(
            mdstat, self.machine.md_names(), self.volumes, self.machine.device_present
        )
        acted = False
        for command in commands:
            acted |= self._run(command)
        if acted:
            mdstat = parse_mdstat(self.machine.mdstat())
            reports, _ = decide(
                mdstat, self.machine.md_names(), self.volumes, self.machine.device_present
            )
        answer = self.exchange([r.to_json() for r in reports])
        self.volumes = [VolumeView.from_json(v) for v in answer]
        return reports

    def _run(self, command: Command) -> bool:
        if command.fallback is not None:
            key = (command.volume, command.device)
            if time.monotonic() - self._readded.get(key, -1e9) < READD_BACKOFF_SECONDS:
                return False
            self._readded[key] = time.monotonic()
        if command.fallback is not None:
            self.machine.discover()
        status, output = self.machine.run(command.argv)
        if status != 0 and command.fallback is not None:
            status, output = self.machine.run(command.fallback)
            command = Command(command.fallback)
        level = logging.INFO if status == 0 else logging.WARNING
        log.log(level, "%s -> %s %s", " ".join(command.argv), status, output)
        return status == 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.once)
            except Exception as exc:  # cloudctld away or mdadm odd: keep going, say so
                log.warning("mirror agent round failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
