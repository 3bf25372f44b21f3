"""The status side of cloudctl's mirrors: the error type, name checks, the sync progress both
methods report, and parsers of md's status texts (/proc/mdstat, mdadm --detail, sysfs). Plans
and commands: mdraid.py (md RAID1 over AoE) and drbd.py (DRBD 8.4, with its own parsers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Volume and resource names end up in device paths (/dev/md/NAME), kernel arguments, config files
# and argv; this set needs no quoting anywhere. md's superblock keeps at most 32 bytes of name.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
# Storage and hardware node names as DRBD compares them with uname -n: a DNS label or FQDN.
HOST_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# Block device paths we put into commands and config files unquoted.
DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9_./:+-]+")


class MirrorError(Exception):
    """A mirror plan, command or status text was invalid; the message says what to fix."""


def check_name(kind: str, value: str) -> str:
    """value if it is a valid volume/resource name, else MirrorError naming the rule."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise MirrorError(
            f"{kind} {value!r}: use 1-32 characters of A-Z a-z 0-9 _ . -, starting with a "
            "letter or digit"
        )
    return value


def check_host(kind: str, value: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not HOST_RE.fullmatch(value):
        raise MirrorError(f"{kind} {value!r} is not a host name (letters, digits, - and .)")
    return value


def check_device(kind: str, value: str) -> str:
    if not isinstance(value, str) or not DEVICE_RE.fullmatch(value) or "/../" in value + "/":
        raise MirrorError(f"{kind} {value!r}: give a block device path under /dev/")
    return value


@dataclass(frozen=True)
class SyncProgress:
    """A running (or queued) resync, recovery, check or verify of a mirror.

    action: "resync", "recovery", "check", "repair", "reshape" (md) or "sync", "verify" (DRBD).
    percent is 0-100; sizes are KiB; finish_s and speed_kib_s are the kernel's own estimates and
    None where the source does not give them (mdadm --detail, DRBD 9 status). queued is True for
    md's resync=DELAYED/PENDING, which wait for another array on the same disks.
    """

    action: str
    percent: float
    done_kib: int | None = None
    total_kib: int | None = None
    out_of_sync_kib: int | None = None
    finish_s: int | None = None
    speed_kib_s: int | None = None
    queued: bool = False


def parse_duration(text: str) -> int:
    """Seconds in "0:00:12" / "1:02" (DRBD) or "0.3min" (md), rounded down."""
    if text.endswith("min"):
        return int(float(text[:-3]) * 60)
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


# Status parsers -------------------------------------------------------------------------------

# mdstat's per-device flags, in the words mdadm --detail uses for the same states.
_MDSTAT_FLAGS = {
    "F": "faulty",
    "S": "spare",
    "W": "writemostly",
    "R": "replacement",
    "J": "journal",
}
_DETAIL_SYNC_KEYS = {
    "Resync Status": "resync",
    "Rebuild Status": "recovery",
    "Check Status": "check",
    "Repair Status": "repair",
    "Reshape Status": "reshape",
}


@dataclass(frozen=True)
class MdMember:
    """One member device of an array, or an empty role slot (device None, "removed").

    number is md's descriptor number (mdstat's [n], --detail's Number); role is the RaidDevice
    slot it fills, known from --detail only (mdstat's [n] is not the role after an --add).
    states uses mdadm --detail's words: active, sync, spare, rebuilding, faulty, removed, ...
    """

    device: str | None
    number: int | None
    role: int | None
    states: tuple[str, ...]

    @property
    def faulty(self) -> bool:
        return "faulty" in self.states


@dataclass(frozen=True)
class MdArray:
    """One md array from /proc/mdstat or mdadm --detail.

    device is the kernel name for mdstat ("md127") and the path mdadm was asked about, less
    "/dev/", for --detail ("md127" or "md/vol1"). slots is md's per-role health ("UU", "U_"),
    name/uuid/metadata come from --detail only.
    """

    device: str
    active: bool
    level: str | None
    read_only: bool
    raid_disks: int | None
    slots: str
    members: tuple[MdMember, ...]
    size_kib: int | None = None
    sync: SyncProgress | None = None
    name: str | None = None
    uuid: str | None = None
    metadata: str | None = None
    bitmap: bool = False
    state: str | None = None

    @property
    def degraded(self) -> bool:
        return "_" in self.slots

    def member(self, device: str) -> MdMember:
        for member in self.members:
            if member.device is not None and _same_device(member.device, device):
                return member
        raise MirrorError(f"{self.device} has no member {device!r}")


def _same_device(a: str, b: str) -> bool:
    return a.removeprefix("/dev/") == b.removeprefix("/dev/")


@dataclass(frozen=True)
class MdStat:
    personalities: tuple[str, ...]
    arrays: tuple[MdArray, ...]

    def array(self, device: str) -> MdArray:
        for array in self.arrays:
            if array.device == device.removeprefix("/dev/"):
                return array
        raise MirrorError(f"/proc/mdstat has no array {device!r}")


_MDSTAT_HEAD = re.compile(r"^(md\S+) : (active|inactive)\s*(.*)$")
_MDSTAT_DEV = re.compile(r"^(\S+?)\[(\d+)\]((?:\([A-Z]\))*)$")
_MDSTAT_SIZE = re.compile(
    r"^\s*(\d+) blocks(?: super (\S+))?.*?(?:\[(\d+)/(\d+)\] \[([U_]+)\])?\s*$"
)
_MDSTAT_SYNC = re.compile(
    r"(resync|recovery|check|repair|reshape)\s*=\s*([\d.]+)%\s*\((\d+)/(\d+)\)"
    r"(?:\s*finish=([\d.]+min))?(?:\s*speed=(\d+)K/sec)?"
)
_MDSTAT_QUEUED = re.compile(r"(resync|recovery|check|repair|reshape)=(DELAYED|PENDING)")


def parse_mdstat(text: str) -> MdStat:
    """/proc/mdstat -> every array in it, with members, health per role and any sync running."""
    personalities: tuple[str, ...] = ()
    arrays: list[MdArray] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("Personalities :"):
            personalities = tuple(re.findall(r"\[(\w+)\]", line))
            continue
        head = _MDSTAT_HEAD.match(line)
        if not head:
            continue
        body = []
        while i < len(lines) and lines[i].startswith((" ", "\t")) and lines[i].strip():
            body.append(lines[i])
            i += 1
        arrays.append(_mdstat_array(head, body))
    return MdStat(personalities, tuple(arrays))


def _mdstat_array(head: re.Match[str], body: list[str]) -> MdArray:
    words = head[3].split()
    read_only = False
    while words and words[0].startswith("("):
        read_only = read_only or "read-only" in words[0]
        words.pop(0)
    level = None
    if head[2] == "active" and words and "[" not in words[0]:
        level = words.pop(0)
    members = []
    for word in words:
        dev = _MDSTAT_DEV.match(word)
        if not dev:
            raise MirrorError(f"/proc/mdstat: cannot read member {word!r} of {head[1]}")
        flags = [_MDSTAT_FLAGS.get(flag, flag) for flag in re.findall(r"\(([A-Z])\)", dev[3])]
        states = tuple(flags) if {"faulty", "spare"} & set(flags) else ("active", *flags)
        members.append(MdMember(dev[1], int(dev[2]), None, states))
    members.sort(key=lambda member: member.number or 0)
    size = metadata = raid_disks = None
    slots, sync, bitmap = "", None, False
    for line in body:
        sized = _MDSTAT_SIZE.match(line)
        if sized and size is None:
            size, metadata = int(sized[1]), sized[2]
            if sized[5]:
                raid_disks, slots = int(sized[3]), sized[5]
            continue
        running = _MDSTAT_SYNC.search(line)
        if running:
            sync = SyncProgress(
                action=running[1],
                percent=float(running[2]),
                done_kib=int(running[3]),
                total_kib=int(running[4]),
                finish_s=parse_duration(running[5]) if running[5] else None,
                speed_kib_s=int(running[6]) if running[6] else None,
            )
            continue
        queued = _MDSTAT_QUEUED.search(line)
        if queued:
            sync = SyncProgress(action=queued[1], percent=0.0, queued=True)
        if line.strip().startswith("bitmap:"):
            bitmap = True
    return MdArray(
        device=head[1],
        active=head[2] == "active",
        level=level,
        read_only=read_only,
        raid_disks=raid_disks,
        slots=slots,
        members=tuple(members),
        size_kib=size,
        sync=sync,
        metadata=metadata,
        bitmap=bitmap,
    )


_DETAIL_ROW = re.compile(r"^\s*(\d+|-)\s+(\d+)\s+(\d+)\s+(\d+|-)\s+(.*?)\s*(/dev/\S+)?\s*$")


def parse_mdadm_detail(text: str) -> MdArray:
    """`mdadm --detail /dev/mdX` -> the same model as parse_mdstat gives for that array."""
    lines = text.splitlines()
    if not lines or not lines[0].rstrip().endswith(":"):
        raise MirrorError("mdadm --detail output should start with the device path and a colon")
    device = lines[0].rstrip()[:-1].removeprefix("/dev/")
    fields: dict[str, str] = {}
    members: list[MdMember] = []
    in_table = False
    for line in lines[1:]:
        if not line.strip():
            continue
        if re.match(r"^\s*Number\s+Major\s+Minor\s+RaidDevice\s+State", line):
            in_table = True
            continue
        if in_table:
            row = _DETAIL_ROW.match(line)
            if row:
                members.append(
                    MdMember(
                        device=row[6].removeprefix("/dev/") if row[6] else None,
                        number=None if row[1] == "-" else int(row[1]),
                        role=None if row[4] == "-" else int(row[4]),
                        states=tuple(row[5].split()),
                    )
                )
            continue
        key, sep, value = line.partition(" : ")
        if sep:
            fields[key.strip()] = value.strip()
    state = fields.get("State", "")
    raid_disks = int(fields["Raid Devices"]) if "Raid Devices" in fields else None
    slots = ""
    if raid_disks is not None:
        in_sync = {m.role for m in members if "sync" in m.states and not m.faulty}
        slots = "".join("U" if role in in_sync else "_" for role in range(raid_disks))
    return MdArray(
        device=device,
        active="inactive" not in state,
        level=fields.get("Raid Level"),
        read_only="read-only" in state,
        raid_disks=raid_disks,
        slots=slots,
        members=tuple(members),
        size_kib=_leading_int(fields.get("Array Size")),
        sync=_detail_sync(fields, state),
        name=fields.get("Name", "").split(" ")[0] or None,
        uuid=fields.get("UUID"),
        metadata=fields.get("Version"),
        bitmap=fields.get("Intent Bitmap") == "Internal"
        or fields.get("Consistency Policy") == "bitmap",
        state=state or None,
    )


def _leading_int(value: str | None) -> int | None:
    match = re.match(r"\d+", value or "")
    return int(match[0]) if match else None


def _detail_sync(fields: dict[str, str], state: str) -> SyncProgress | None:
    for key, action in _DETAIL_SYNC_KEYS.items():
        if key in fields:
            percent = re.match(r"([\d.]+)%", fields[key])
            if percent:
                return SyncProgress(action=action, percent=float(percent[1]))
    queued = re.search(r"(resyncing|recovering|checking|reshaping) \((DELAYED|PENDING)\)", state)
    if queued:
        action = {"resyncing": "resync", "recovering": "recovery", "checking": "check"}
        return SyncProgress(action=action.get(queued[1], "reshape"), percent=0.0, queued=True)
    return None


def parse_md_sysfs(sync_action: str, sync_completed: str, sync_speed: str) -> SyncProgress | None:
    """A running sync from /sys/block/mdX/md/{sync_action,sync_completed,sync_speed}, or None.

    sync_completed is "DONE / TOTAL" in 512-byte sectors ("none" when idle); speed is KiB/s.
    """
    action = sync_action.strip()
    done_total = re.fullmatch(r"(\d+) / (\d+)", sync_completed.strip())
    if action in ("idle", "frozen") or not done_total:
        return None
    done, total = int(done_total[1]) // 2, int(done_total[2]) // 2
    speed = sync_speed.strip()
    return SyncProgress(
        action={"recover": "recovery"}.get(action, action),
        percent=round(100.0 * done / total, 1) if total else 0.0,
        done_kib=done,
        total_kib=total,
        speed_kib_s=int(speed) if speed.isdigit() else None,
    )
