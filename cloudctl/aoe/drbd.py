"""DRBD 8.4 mirroring between a pair of storage nodes: resource files, drbdsetup-84 commands
(what `drbdadm-84 up` would run, as Ganeti's drbd_cmdgen does) and status parsers for /proc/drbd
and `drbdadm status`. Builds and parses only; running the commands is the caller's business.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from cloudctl.aoe.mirror import (
    MirrorError,
    SyncProgress,
    check_device,
    check_host,
    check_name,
    parse_duration,
)

# drbd-utils 9.x installs the tools for 8.4 kernels here; its plain drbdsetup speaks DRBD 9.
DRBDSETUP = "/usr/lib/drbd/drbdsetup-84"
DRBDMETA = "drbdmeta"
MAX_MINOR = (1 << 20) - 1  # DRBD 8.4 minors are 20 bits
SECRET_MAX = 64  # SHARED_SECRET_MAX in drbd_limits.h
HMAC_ALGS = ("sha1", "sha256", "sha512", "md5")
VERIFY_ALGS = ("sha1", "sha256", "sha512", "md5", "crc32c")
PROTOCOLS = ("A", "B", "C")
# 8.4's connection states that are really DRBD 9 replication states of a Connected link.
_REPLICATION_STATES = frozenset(
    (
        "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID", "SyncSource",
        "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT", "Ahead", "Behind",
    )
)  # fmt: skip


@dataclass(frozen=True)
class DrbdHost:
    """One side of a resource: `name` must equal that node's `uname -n`."""

    name: str
    address: str
    port: int
    minor: int
    disk: str

    def __post_init__(self) -> None:
        check_host("DRBD host", self.name)
        try:
            parsed = ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise MirrorError(f"DRBD host {self.name}: address {self.address!r}: {exc}") from None
        object.__setattr__(self, "address", str(parsed))
        if not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise MirrorError(f"DRBD host {self.name}: port {self.port!r}: use 1-65535")
        if not (isinstance(self.minor, int) and 0 <= self.minor <= MAX_MINOR):
            raise MirrorError(f"DRBD host {self.name}: minor {self.minor!r}: use 0-{MAX_MINOR}")
        check_device(f"DRBD host {self.name} disk", self.disk)

    @property
    def device(self) -> str:
        return f"/dev/drbd{self.minor}"

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"

    @property
    def endpoint(self) -> str:
        """ "10.0.0.1:7789" or "[fd00::1]:7789", as in the resource file's address line."""
        host = f"[{self.address}]" if self.family == "ipv6" else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class DrbdResource:
    """A two-node DRBD 8.4 resource with internal metadata. The secret never shows in repr."""

    name: str
    hosts: tuple[DrbdHost, DrbdHost]
    secret: str = field(repr=False)
    protocol: str = "C"
    allow_two_primaries: bool = True
    cram_hmac_alg: str = "sha256"
    verify_alg: str = "sha256"

    def __post_init__(self) -> None:
        check_name("DRBD resource", self.name)
        if len(self.hosts) != 2 or not all(isinstance(h, DrbdHost) for h in self.hosts):
            raise MirrorError(f"DRBD resource {self.name}: give exactly two DrbdHost")
        first, second = self.hosts
        if first.name == second.name:
            raise MirrorError(f"DRBD resource {self.name}: both hosts are named {first.name}")
        if (first.address, first.port) == (second.address, second.port):
            raise MirrorError(f"DRBD resource {self.name}: both hosts use {first.endpoint}")
        if first.family != second.family:
            raise MirrorError(f"DRBD resource {self.name}: mixes IPv4 and IPv6 addresses")
        if not isinstance(self.secret, str) or not self.secret:
            raise MirrorError(
                f"DRBD resource {self.name}: a shared secret is required (peers authenticate "
                "with cram-hmac); generate one per resource"
            )
        if len(self.secret) > SECRET_MAX or not all(" " <= c <= "~" for c in self.secret):
            raise MirrorError(
                f"DRBD resource {self.name}: the secret must be 1-{SECRET_MAX} printable ASCII "
                "characters"
            )
        if self.protocol not in PROTOCOLS:
            raise MirrorError(f"DRBD resource {self.name}: protocol {self.protocol!r}: use A/B/C")
        if self.cram_hmac_alg not in HMAC_ALGS:
            raise MirrorError(f"cram-hmac-alg {self.cram_hmac_alg!r}: use one of {HMAC_ALGS}")
        if self.verify_alg not in VERIFY_ALGS:
            raise MirrorError(f"verify-alg {self.verify_alg!r}: use one of {VERIFY_ALGS}")

    def host(self, name: str) -> DrbdHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise MirrorError(f"DRBD resource {self.name} has no host {name!r}")

    def peer(self, name: str) -> DrbdHost:
        self.host(name)
        return next(host for host in self.hosts if host.name != name)


def _quote(value: str) -> str:
    # drbdadm's scanner reads C-like strings: backslash escapes the next character.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_resource(resource: DrbdResource) -> str:
    """The resource file (e.g. /etc/drbd.d/NAME.res) for drbdadm-84, the same on both nodes."""
    net = [f"protocol {resource.protocol};"]
    if resource.allow_two_primaries:
        net.append("allow-two-primaries yes;")
    net += [
        f"cram-hmac-alg {resource.cram_hmac_alg};",
        f"shared-secret {_quote(resource.secret)};",
        f"verify-alg {resource.verify_alg};",
    ]
    lines = [
        f"# DRBD 8.4 resource {resource.name}, rendered by cloudctl: edits are overwritten.",
        f"resource {resource.name} {{",
        "  net {",
        *(f"    {line}" for line in net),
        "  }",
    ]
    for host in resource.hosts:
        address = host.endpoint if host.family == "ipv4" else f"ipv6 {host.endpoint}"
        lines += [
            f"  on {host.name} {{",
            f"    device /dev/drbd{host.minor};",
            f"    disk {host.disk};",
            f"    address {address};",
            "    meta-disk internal;",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


# Commands: the same argv drbdadm-84 runs (checked against `drbdadm-84 -d` in the tests) --------


def create_md_command(resource: DrbdResource, host: str, *, force: bool = False) -> list[str]:
    """argv that writes fresh DRBD metadata on `host`'s disk (first use only).

    force=True skips drbdmeta's questions (it asks when the disk already holds metadata or a
    filesystem), which a non-interactive caller cannot answer.
    """
    local = resource.host(host)
    argv = [DRBDMETA, str(local.minor), "v08", local.disk, "internal", "create-md"]
    return [*argv, "--force"] if force else argv


def attach_commands(resource: DrbdResource, host: str) -> list[list[str]]:
    """argv list that creates the resource and minor on `host` and attaches its disk."""
    local = resource.host(host)
    minor = str(local.minor)
    return [
        [DRBDSETUP, "new-resource", resource.name],
        [DRBDSETUP, "new-minor", resource.name, minor, "0"],
        # Replays the activity log of an unclean shutdown into the bitmap before attaching.
        [DRBDMETA, minor, "v08", local.disk, "internal", "apply-al"],
        [DRBDSETUP, "attach", minor, local.disk, local.disk, "internal"],
    ]


def connect_command(resource: DrbdResource, host: str) -> list[str]:
    """argv that connects `host` to its peer with the resource's net options.

    The secret is an argument, as with drbdadm itself: visible in `ps` while it runs.
    """
    local, peer = resource.host(host), resource.peer(host)
    argv = [DRBDSETUP, "connect", resource.name]
    argv += [f"{local.family}:{local.endpoint}", f"{peer.family}:{peer.endpoint}"]
    argv.append(f"--protocol={resource.protocol}")
    if resource.allow_two_primaries:
        argv.append("--allow-two-primaries=yes")
    argv += [
        f"--cram-hmac-alg={resource.cram_hmac_alg}",
        f"--shared-secret={resource.secret}",
        f"--verify-alg={resource.verify_alg}",
    ]
    return argv


def up_commands(resource: DrbdResource, host: str) -> list[list[str]]:
    """`drbdadm-84 up`: attach, then connect."""
    return [*attach_commands(resource, host), connect_command(resource, host)]


def initial_sync_command(resource: DrbdResource, host: str) -> list[str]:
    """argv that makes `host` primary with its data as the truth: a full sync to the peer."""
    return [DRBDSETUP, "primary", str(resource.host(host).minor), "--force"]


def skip_initial_sync_command(resource: DrbdResource, host: str) -> list[str]:
    """argv (on one node, both connected and Secondary) that declares both fresh disks in sync.

    Only for disks that are both zeroed or both about to be overwritten completely.
    """
    return [DRBDSETUP, "new-current-uuid", str(resource.host(host).minor), "--clear-bitmap"]


def role_command(resource: DrbdResource, host: str, role: str) -> list[str]:
    if role not in ("primary", "secondary"):
        raise MirrorError(f"DRBD role {role!r}: use primary or secondary")
    return [DRBDSETUP, role, str(resource.host(host).minor)]


def verify_command(resource: DrbdResource, host: str) -> list[str]:
    """argv that starts an online verify (verify-alg) against the peer; progress as a sync."""
    return [DRBDSETUP, "verify", str(resource.host(host).minor)]


def resync_rate_command(resource: DrbdResource, host: str, kib_s: int) -> list[str]:
    """argv that pins `host`'s resync rate (KiB/s), turning off 8.4's dynamic controller.

    Set on the sync source; the controller (c-plan-ahead) otherwise picks its own rate.
    """
    if not (isinstance(kib_s, int) and 1 <= kib_s <= 4 << 20):
        raise MirrorError(f"resync rate {kib_s!r} KiB/s: use 1-{4 << 20}")
    minor = str(resource.host(host).minor)
    return [DRBDSETUP, "disk-options", minor, "--c-plan-ahead=0", f"--resync-rate={kib_s}k"]


def down_command(resource: DrbdResource) -> list[str]:
    return [DRBDSETUP, "down", resource.name]


# Status ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DrbdStatus:
    """One DRBD device (volume) and its single peer, from /proc/drbd or `drbdadm status`.

    Connection states use DRBD 9's words for both sources: 8.4's cs:WFConnection is
    connection "Connecting"; cs:Connected is "Connected"/replication "Established"; cs:SyncSource
    is "Connected"/"SyncSource". cstate keeps 8.4's single word (None from drbdadm status).
    resource and peer names come from drbdadm status only, the minor from /proc/drbd (or
    `drbdadm status --verbose`). out_of_sync_kib is 8.4's oos: or DRBD 9's out-of-sync:.
    """

    resource: str | None
    minor: int | None
    volume: int | None
    connection: str
    replication: str
    role: str
    peer_role: str
    disk: str
    peer_disk: str
    cstate: str | None = None
    protocol: str | None = None
    peer: str | None = None
    sync: SyncProgress | None = None
    out_of_sync_kib: int | None = None

    @property
    def connected(self) -> bool:
        return self.connection == "Connected"

    @property
    def in_sync(self) -> bool:
        """Connected, no sync running, and both disks UpToDate."""
        return (
            self.connected
            and self.replication == "Established"
            and self.disk == self.peer_disk == "UpToDate"
        )


@dataclass(frozen=True)
class ProcDrbd:
    version: str | None
    devices: tuple[DrbdStatus, ...]

    def minor(self, minor: int) -> DrbdStatus:
        for device in self.devices:
            if device.minor == minor:
                return device
        raise MirrorError(f"/proc/drbd has no minor {minor}")


def _split_cstate(cstate: str) -> tuple[str, str]:
    if cstate in _REPLICATION_STATES:
        return "Connected", cstate
    if cstate == "Connected":
        return "Connected", "Established"
    if cstate == "WFConnection":
        return "Connecting", "Off"
    return cstate, "Off"


_PROC_DEVICE = re.compile(
    r"^\s*(\d+): cs:(\S+)(?: ro:(\S+)/(\S+) ds:(\S+)/(\S+)(?: ([ABC]))?)?(?:\s+\S+)?\s*$"
)
_PROC_SYNC = re.compile(r"(sync'ed|verified):\s*([\d.]+)% \((\d+)/(\d+)\)([KM])")
_PROC_FINISH = re.compile(r"finish: (\S+) speed: ([\d,]+) \(([\d,]+)\)")


def parse_proc_drbd(text: str) -> ProcDrbd:
    """/proc/drbd of DRBD 8.4 -> every configured minor ("cs:Unconfigured" ones are left out)."""
    version_match = re.search(r"^version: (\S+)", text, re.MULTILINE)
    if version_match and not version_match[1].startswith("8."):
        raise MirrorError(
            f"/proc/drbd says DRBD {version_match[1]}: DRBD 9 shows no devices there; parse "
            "`drbdadm status` with parse_drbdadm_status"
        )
    blocks: list[tuple[re.Match[str], list[str]]] = []
    for line in text.splitlines():
        head = _PROC_DEVICE.match(line)
        if head:
            blocks.append((head, []))
        elif blocks and line.strip():
            blocks[-1][1].append(line)
    devices = []
    for head, body in blocks:
        if head[2] == "Unconfigured":
            continue
        devices.append(_proc_device(head, "\n".join(body)))
    return ProcDrbd(version_match[1] if version_match else None, tuple(devices))


def _proc_device(head: re.Match[str], body: str) -> DrbdStatus:
    connection, replication = _split_cstate(head[2])
    oos = re.search(r"\boos:(\d+)", body)
    sync = None
    progress = _PROC_SYNC.search(body)
    if progress:
        unit = 1024 if progress[5] == "M" else 1
        left, total = int(progress[3]) * unit, int(progress[4]) * unit
        finish = _PROC_FINISH.search(body)
        sync = SyncProgress(
            action="verify" if progress[1] == "verified" else "sync",
            percent=float(progress[2]),
            done_kib=total - left,
            total_kib=total,
            out_of_sync_kib=int(oos[1]) if oos else None,
            finish_s=parse_duration(finish[1]) if finish else None,
            # The first figure is the current rate; the one in brackets the average so far.
            speed_kib_s=int(finish[2].replace(",", "")) if finish else None,
        )
    return DrbdStatus(
        resource=None,
        minor=int(head[1]),
        volume=None,
        connection=connection,
        replication=replication,
        role=head[3] or "Unknown",
        peer_role=head[4] or "Unknown",
        disk=head[5] or "Diskless",
        peer_disk=head[6] or "DUnknown",
        cstate=head[2],
        protocol=head[7],
        sync=sync,
        out_of_sync_kib=int(oos[1]) if oos else None,
    )


def parse_drbdadm_status(text: str) -> tuple[DrbdStatus, ...]:
    """`drbdadm status` / `drbdsetup status` (DRBD 9 layout; also drbdsetup-84's) -> devices.

    Also reads --verbose and --statistics output. A resource with several volumes gives one
    DrbdStatus per volume; a peer-less resource (StandAlone before connect) shows peer fields
    as Unknown/DUnknown.
    """
    resources = _status_tree(text)
    devices: list[DrbdStatus] = []
    for name, local, local_volumes, peers in resources:
        if len(peers) > 1:
            raise MirrorError(
                f"drbdadm status: resource {name} has {len(peers)} peers; cloudctl pairs have one"
            )
        peer_name, connection, peer_volumes = peers[0] if peers else (None, {}, {})
        for volume in sorted(local_volumes or {None: {}}):
            mine = local_volumes.get(volume, {}) if local_volumes else {}
            theirs = peer_volumes.get(volume) or peer_volumes.get(None) or {}
            devices.append(_status_device(name, volume, local, mine, peer_name, connection, theirs))
    return tuple(devices)


_Fields = dict[str, str]


def _status_tree(
    text: str,
) -> list[tuple[str, _Fields, dict[int | None, _Fields], list[tuple[str, _Fields, dict]]]]:
    resources: list = []
    target: _Fields | None = None
    section = "resource"
    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        words = raw.split()
        fields = dict(word.split(":", 1) for word in words if ":" in word)
        bare = [word for word in words if ":" not in word]
        if indent == 0:
            if not bare:
                raise MirrorError(f"drbdadm status: expected a resource name in {raw!r}")
            resources.append((bare[0], dict(fields), {}, []))
            target, section = resources[-1][1], "resource"
            continue
        if not resources:
            raise MirrorError(f"drbdadm status: {raw!r} before any resource line")
        _, _, local_volumes, peers = resources[-1]
        if bare and indent == 2:
            # A peer (connection) line: "node-b role:Secondary" or "peer connection:Connecting".
            peers.append((bare[0], dict(fields), {}))
            target, section = peers[-1][1], "peer"
        elif indent == 2 or (indent == 4 and section == "peer" and _opens_volume(fields)):
            volume = int(fields["volume"]) if "volume" in fields else None
            volumes = local_volumes if section == "resource" else peers[-1][2]
            target = volumes.setdefault(volume, {})
            target.update(fields)
        elif target is not None:
            target.update(fields)  # a continuation line: --verbose/--statistics details
    return resources


def _opens_volume(fields: _Fields) -> bool:
    return bool({"volume", "replication", "peer-disk"} & fields.keys())


def _status_device(
    name: str,
    volume: int | None,
    local: _Fields,
    mine: _Fields,
    peer_name: str | None,
    connection: _Fields,
    theirs: _Fields,
) -> DrbdStatus:
    conn = connection.get("connection", "Connected" if "role" in connection else "StandAlone")
    replication = theirs.get("replication", "Established" if conn == "Connected" else "Off")
    oos = theirs.get("out-of-sync")
    sync = None
    if "done" in theirs:
        sync = SyncProgress(
            action="verify" if replication.startswith("Verify") else "sync",
            percent=float(theirs["done"]),
            out_of_sync_kib=int(oos) if oos else None,
        )
    return DrbdStatus(
        resource=name,
        minor=int(mine["minor"]) if "minor" in mine else None,
        volume=volume,
        connection=conn,
        replication=replication,
        role=local.get("role", "Unknown"),
        peer_role=connection.get("role", "Unknown"),
        disk=mine.get("disk", "Diskless"),
        peer_disk=theirs.get("peer-disk", "DUnknown"),
        peer=peer_name,
        sync=sync,
        out_of_sync_kib=int(oos) if oos else None,
    )
