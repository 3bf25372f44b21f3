"""A storage node's DRBD state as its agent reports it: the reader (/proc/drbd for 8.4, `drbdadm
status` for DRBD 9) and the JSON form that cloudctld checks, keeps and `storage status` shows.
Parsing stays in drbd.py; this module picks the source and names the devices.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cloudctl.aoe.drbd import DrbdStatus, parse_drbdadm_status, parse_proc_drbd
from cloudctl.aoe.mirror import MirrorError, SyncProgress

PROC_DRBD = Path("/proc/drbd")
# udev's 65-drbd.rules link each minor here by resource: by-res/NAME/VOLUME (or, from 8.4's
# drbdadm, by-res/NAME) -> ../../drbdMINOR. /proc/drbd of 8.4 names no resources.
BY_RES = Path("/dev/drbd/by-res")
# Names each resource and its peer (drbdadm runs `drbdsetup status`). Minors and out-of-sync
# sizes would need drbdsetup's --verbose/--statistics: drbdadm 9.22 refuses --statistics and
# takes --verbose as its own.
DRBDADM_STATUS = ("drbdadm", "status")
STATUS_TIMEOUT_SECONDS = 10.0
_PROC_DEVICE_LINE = re.compile(r"^ *\d+: cs:", re.MULTILINE)  # " 0: cs:Connected ro:..."

Names = Mapping[int, tuple[str, int | None]]  # minor -> (resource, volume)


def state_from_texts(
    proc_text: str | None, run_status: Callable[[], str], names: Names
) -> tuple[DrbdStatus, ...] | None:
    """This node's DRBD devices from /proc/drbd's text (None: no /proc/drbd, no DRBD here).

    8.4 lists its devices there (an 8.4 with nothing configured lists none); DRBD 9 prints only
    its version, so `run_status()` gives `drbdadm status` instead. 8.4's minors get their
    resource names from `names`.
    """
    if proc_text is None:
        return None
    if _PROC_DEVICE_LINE.search(proc_text) or re.search(r"^version: 8\.", proc_text, re.M):
        devices = parse_proc_drbd(proc_text).devices
        return tuple(_named(device, names) for device in devices)
    return parse_drbdadm_status(run_status())


def _named(device: DrbdStatus, names: Names) -> DrbdStatus:
    if device.resource is not None or device.minor not in names:
        return device
    resource, volume = names[device.minor]
    return dataclasses.replace(device, resource=resource, volume=volume)


def names_by_res(directory: Path = BY_RES) -> dict[int, tuple[str, int | None]]:
    """minor -> (resource, volume) from udev's by-res links; {} where there are none."""
    names: dict[int, tuple[str, int | None]] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return names
    for entry in entries:
        if entry.is_symlink():
            links = [(entry, None)]
        elif entry.is_dir():
            links = [(link, int(link.name)) for link in entry.iterdir() if link.name.isdigit()]
        else:
            continue
        for link, volume in links:
            device = re.fullmatch(r"drbd(\d+)", Path(os.path.realpath(link)).name)
            if device:
                names[int(device[1])] = (entry.name, volume)
    return names


def run_drbdadm_status(timeout: float = STATUS_TIMEOUT_SECONDS) -> str:
    """`drbdadm status`'s output; MirrorError if it cannot run or prints nothing but an error.

    Output counts even with a non-zero exit: what it printed is what the kernel has, and a
    complaint about one resource must not hide the others.
    """
    try:
        done = subprocess.run(
            DRBDADM_STATUS, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MirrorError(f"{' '.join(DRBDADM_STATUS)}: {exc}") from None
    if done.returncode != 0 and not done.stdout.strip():
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise MirrorError(f"{' '.join(DRBDADM_STATUS)}: {why}")
    return done.stdout


class DrbdReader:
    """Reads this node's DRBD state; call it once per agent round (blocking: use a thread)."""

    def __init__(
        self,
        proc: Path = PROC_DRBD,
        by_res: Path = BY_RES,
        run_status: Callable[[], str] = run_drbdadm_status,
    ) -> None:
        self.proc = proc
        self.by_res = by_res
        self.run_status = run_status

    def __call__(self) -> tuple[DrbdStatus, ...] | None:
        try:
            text = self.proc.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MirrorError(f"{self.proc}: {exc.strerror or exc}") from None
        return state_from_texts(text, self.run_status, names_by_res(self.by_res))


# JSON ----------------------------------------------------------------------------------------

_STATE_FIELDS = ("connection", "replication", "role", "peer_role", "disk", "peer_disk")
_SYNC_COUNTS = ("done_kib", "total_kib", "out_of_sync_kib", "finish_s", "speed_kib_s")
_TOKEN = re.compile(r"[!-~]{1,253}")  # printable ASCII, no spaces: names and state words


def status_to_json(status: DrbdStatus) -> dict[str, Any]:
    """One device as the agent reports it; in_sync is derived (ignored when read back)."""
    data = dataclasses.asdict(status)
    if status.sync is not None:
        data["sync"] = {k: v for k, v in data["sync"].items() if k != "queued"}
    data["in_sync"] = status.in_sync
    return data


def status_from_json(data: Any, where: str = "drbd resource") -> DrbdStatus:
    """The inverse of status_to_json; MirrorError naming the first bad field.

    Unknown fields are ignored, so a newer agent may add some.
    """
    if not isinstance(data, dict):
        raise MirrorError(f"{where} must be an object")
    fields: dict[str, Any] = {}
    for name in _STATE_FIELDS:
        if name not in data:
            raise MirrorError(f"{where}: missing {name}")
        fields[name] = _token(data[name], f"{where}.{name}")
    for name in ("resource", "peer", "cstate", "protocol"):
        value = data.get(name)
        fields[name] = None if value is None else _token(value, f"{where}.{name}")
    for name in ("minor", "volume", "out_of_sync_kib"):
        fields[name] = _count(data.get(name), f"{where}.{name}")
    fields["sync"] = _sync_from_json(data.get("sync"), f"{where}.sync")
    return DrbdStatus(**fields)


def statuses_from_json(data: Any) -> tuple[DrbdStatus, ...]:
    """A report's "drbd" list; MirrorError ("drbd[1].role must be ...") on a bad shape."""
    if not isinstance(data, list):
        raise MirrorError("drbd must be a list of resource objects")
    return tuple(status_from_json(item, f"drbd[{i}]") for i, item in enumerate(data))


def _sync_from_json(data: Any, where: str) -> SyncProgress | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise MirrorError(f"{where} must be an object or null")
    percent = data.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise MirrorError(f"{where}.percent must be a number from 0 to 100")
    return SyncProgress(
        action=_token(data.get("action"), f"{where}.action"),
        percent=float(percent),
        **{name: _count(data.get(name), f"{where}.{name}") for name in _SYNC_COUNTS},
    )


def _token(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise MirrorError(f"{where} must be a word of printable characters")
    return value


def _count(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MirrorError(f"{where} must be a whole number >= 0 or null")
    return value
