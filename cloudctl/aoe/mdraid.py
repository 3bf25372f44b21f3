"""md RAID1 over two AoE targets, assembled by the diskless hardware node that uses the volume.

Owns the plan (legs, uuid), the commands and initramfs shell that act on it and the kernel
arguments that carry it; re-exports mirror.py's parsers of md's status texts. No I/O here.
"""

from __future__ import annotations

import re
import shlex
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudctl.aoe.mirror import (  # the md status parsers live with the shared status model
    MdArray,
    MdMember,
    MdStat,
    MirrorError,
    check_host,
    check_name,
    parse_md_sysfs,
    parse_mdadm_detail,
    parse_mdstat,
)

__all__ = [
    "AoeLeg",
    "LegReturn",
    "MdArray",
    "MdBootArgs",
    "MdBootSpec",
    "MdMember",
    "MdStat",
    "MirrorPlan",
    "assemble_command",
    "create_command",
    "fail_leg_command",
    "parse_kernel_args",
    "parse_md_sysfs",
    "parse_mdadm_detail",
    "parse_mdstat",
    "remove_lost_legs_command",
    "render_initramfs_script",
    "render_kernel_args",
    "return_leg_commands",
    "sysfs_progress_paths",
    "volume_uuid",
]

ETHERD = "/dev/etherd"
# 0xffff and 0xff are the protocol's broadcast shelf and slot: never an export's address.
MAX_SHELF = 0xFFFE
MAX_SLOT = 0xFE
METADATA = "1.0"  # superblock at the end, data at offset 0: each leg alone is the plain volume
# x86 COMMAND_LINE_SIZE; longer command lines are cut off by the boot loader or kernel.
CMDLINE_MAX = 2048
MAX_AOE_WAIT = 3600
DEFAULT_AOE_WAIT = 30
# uuid5 namespace for md array uuids: the same volume name gives the same array uuid on the
# controller (mdadm --create) and on every node that assembles it (kernel argument).
VOLUME_UUID_NAMESPACE = uuidlib.UUID("0b5c5f0e-8f2d-4f4e-9a8e-6d0c1c7a3e11")

_TARGET_RE = re.compile(r"e(\d{1,5})\.(\d{1,3})")
_HEX32_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class AoeLeg:
    """One half of a mirror: AoE target eSHELF.SLOT exported by storage node `node`."""

    shelf: int
    slot: int
    node: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.shelf, int) and 0 <= self.shelf <= MAX_SHELF):
            raise MirrorError(f"AoE shelf {self.shelf!r}: use 0-{MAX_SHELF}")
        if not (isinstance(self.slot, int) and 0 <= self.slot <= MAX_SLOT):
            raise MirrorError(f"AoE slot {self.slot!r}: use 0-{MAX_SLOT}")
        if self.node:
            check_host("storage node", self.node)

    @property
    def target(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    @property
    def device(self) -> str:
        return f"{ETHERD}/{self.target}"

    @classmethod
    def parse(cls, target: str, node: str = "") -> AoeLeg:
        """AoeLeg from "e1.2" (also "/dev/etherd/e1.2")."""
        match = _TARGET_RE.fullmatch(target.removeprefix(ETHERD + "/"))
        if not match:
            raise MirrorError(f"AoE target {target!r}: write it as eSHELF.SLOT, e.g. e1.2")
        return cls(int(match[1]), int(match[2]), node)


def volume_uuid(name: str) -> str:
    """The md array uuid of volume `name`, in mdadm's form (8:8:8:8 hex)."""
    raw = uuidlib.uuid5(VOLUME_UUID_NAMESPACE, check_name("volume name", name)).hex
    return ":".join(raw[i : i + 8] for i in range(0, 32, 8))


def _uuid_hex(value: str) -> str:
    # mdadm accepts the 32 digits with ":", ".", "-" or " " anywhere between them.
    digits = re.sub(r"[:.\- ]", "", value).lower()
    if not _HEX32_RE.fullmatch(digits):
        raise MirrorError(f"md uuid {value!r}: give 32 hex digits (mdadm form 8:8:8:8)")
    return digits


def _mdadm_uuid(value: str) -> str:
    digits = _uuid_hex(value)
    return ":".join(digits[i : i + 8] for i in range(0, 32, 8))


@dataclass(frozen=True)
class MdBootSpec:
    """What one `cloudctl.md=` kernel argument carries: enough to assemble, nothing more."""

    name: str
    uuid: str  # mdadm form
    targets: tuple[str, ...]  # "e1.1", ...

    @property
    def md_device(self) -> str:
        return f"/dev/md/{self.name}"

    def kernel_arg(self) -> str:
        return f"cloudctl.md={self.name}:{_uuid_hex(self.uuid)}:{','.join(self.targets)}"


@dataclass(frozen=True)
class MirrorPlan:
    """A mirrored volume: legs on two storage nodes, assembled by uuid as /dev/md/NAME.

    bitmap=True gives the array an internal write-intent bitmap, so a leg that comes back after
    a storage node reboot is re-added with a resync of the changed regions only.
    """

    name: str
    legs: tuple[AoeLeg, AoeLeg]
    uuid: str
    metadata: str = METADATA
    bitmap: bool = True

    def __post_init__(self) -> None:
        check_name("volume name", self.name)
        if len(self.legs) != 2 or not all(isinstance(leg, AoeLeg) for leg in self.legs):
            raise MirrorError(f"volume {self.name}: a RAID1 mirror needs exactly two AoeLeg legs")
        first, second = self.legs
        if first.target == second.target:
            raise MirrorError(f"volume {self.name}: both legs are {first.target}")
        if first.node and first.node == second.node:
            raise MirrorError(
                f"volume {self.name}: both legs are on storage node {first.node}; put them on two"
            )
        object.__setattr__(self, "uuid", _mdadm_uuid(self.uuid))
        if self.metadata != METADATA:
            raise MirrorError(
                f"volume {self.name}: metadata {self.metadata!r}; only 1.0 keeps data at offset 0"
            )

    @classmethod
    def for_volume(cls, name: str, legs: Sequence[AoeLeg], *, bitmap: bool = True) -> MirrorPlan:
        first, second = legs  # a MirrorError below names the problem if there are not two
        return cls(name, (first, second), volume_uuid(name), bitmap=bitmap)

    @property
    def md_device(self) -> str:
        return f"/dev/md/{self.name}"

    @property
    def devices(self) -> tuple[str, str]:
        return (self.legs[0].device, self.legs[1].device)

    def leg(self, which: str) -> AoeLeg:
        """The leg named by target ("e1.1"), device path or storage node name."""
        for leg in self.legs:
            if which in (leg.target, leg.device) or (leg.node and which == leg.node):
                return leg
        raise MirrorError(f"volume {self.name} has no leg {which!r}")

    def boot_spec(self) -> MdBootSpec:
        return MdBootSpec(self.name, self.uuid, tuple(leg.target for leg in self.legs))


# Commands -------------------------------------------------------------------------------------


def create_command(plan: MirrorPlan, *, fresh: bool) -> list[str]:
    """argv that creates the array on first use.

    fresh=True (both legs zeroed, or brand-new sparse exports) adds --assume-clean: the legs
    already agree, so the initial full resync would only copy zeros across the network.
    --run answers mdadm's "Continue creating array?" when a leg holds an old filesystem.
    """
    argv = ["mdadm", "--create", plan.md_device, "--run", "--level=1", "--raid-devices=2"]
    argv += [f"--metadata={plan.metadata}", f"--name={plan.name}", f"--uuid={plan.uuid}"]
    # No "HOST:" prefix in the superblock's name: any hardware node assembles the volume, and
    # mdadm treats arrays of another homehost as foreign (measured: the name stays "vol1").
    argv.append("--homehost=<none>")
    argv.append("--bitmap=internal" if plan.bitmap else "--bitmap=none")
    if fresh:
        argv.append("--assume-clean")
    return [*argv, *plan.devices]


def assemble_command(spec: MirrorPlan | MdBootSpec, devices: Iterable[str] = ()) -> list[str]:
    """argv that assembles the array from `devices` (default: all its legs), degraded if short."""
    boot = spec.boot_spec() if isinstance(spec, MirrorPlan) else spec
    devs = list(devices) or [f"{ETHERD}/{target}" for target in boot.targets]
    return ["mdadm", "--assemble", boot.md_device, f"--uuid={boot.uuid}", "--run", *devs]


def fail_leg_command(plan: MirrorPlan, which: str) -> list[str]:
    """argv that marks a leg faulty and takes it out of the array (storage node maintenance)."""
    leg = plan.leg(which)
    return ["mdadm", plan.md_device, "--fail", leg.device, "--remove", leg.device]


def remove_lost_legs_command(plan: MirrorPlan) -> list[str]:
    """argv that removes legs the kernel already failed or whose device node is gone."""
    return ["mdadm", plan.md_device, "--remove", "failed", "--remove", "detached"]


@dataclass(frozen=True)
class LegReturn:
    """Commands to bring a removed leg back: try re_add, and only if it fails run fallback.

    --re-add keeps the leg's role and, with a bitmap, resyncs only what changed while it was
    away. Without a bitmap mdadm refuses it for a leg that missed writes ("--re-add ... is not
    possible", measured); --add then takes the leg back as a spare for a full recovery.
    """

    re_add: tuple[str, ...]
    fallback: tuple[str, ...]

    def shell(self) -> str:
        return f"{_shell_join(self.re_add)} || {_shell_join(self.fallback)}"


def return_leg_commands(plan: MirrorPlan, which: str) -> LegReturn:
    leg = plan.leg(which)
    return LegReturn(
        re_add=("mdadm", plan.md_device, "--re-add", leg.device),
        fallback=("mdadm", plan.md_device, "--add", leg.device),
    )


def sysfs_progress_paths(kernel_name: str) -> dict[str, str]:
    """Where the kernel reports a running resync of md device `kernel_name` (e.g. "md127").

    Read these (or /proc/mdstat) and pass them to parse_md_sysfs; resolve /dev/md/NAME to its
    kernel name with realpath first.
    """
    if not re.fullmatch(r"md\d+|md_[A-Za-z0-9_.-]+", kernel_name):
        raise MirrorError(f"{kernel_name!r} is not an md kernel device name like md127")
    base = f"/sys/block/{kernel_name}/md"
    return {key: f"{base}/{key}" for key in ("sync_action", "sync_completed", "sync_speed")}


def _shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in argv)


# Kernel arguments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MdBootArgs:
    """The mirrors a diskless node assembles at boot, as its kernel command line says."""

    arrays: tuple[MdBootSpec, ...]
    aoe_wait: int = DEFAULT_AOE_WAIT
    root: str | None = None


def render_kernel_args(
    plans: Sequence[MirrorPlan], *, aoe_wait: int = DEFAULT_AOE_WAIT, root: str | None = None
) -> str:
    """`cloudctl.md=NAME:UUID:eS.L,eS.L ... cloudctl.aoe_wait=N [root=/dev/md/NAME]`.

    One cloudctl.md per array; UUID is the array uuid as 32 lowercase hex digits (no colons,
    which separate the fields). root names one of the plans (by volume name).
    """
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise MirrorError(f"kernel arguments: volume names repeat in {names}")
    if not (isinstance(aoe_wait, int) and 0 <= aoe_wait <= MAX_AOE_WAIT):
        raise MirrorError(f"aoe_wait {aoe_wait!r}: use 0-{MAX_AOE_WAIT} seconds")
    args = [plan.boot_spec().kernel_arg() for plan in plans]
    args.append(f"cloudctl.aoe_wait={aoe_wait}")
    if root is not None:
        if root not in names:
            raise MirrorError(f"root volume {root!r} is not one of the mirrors {names}")
        args.append(f"root=/dev/md/{root}")
    line = " ".join(args)
    if len(line) > CMDLINE_MAX // 2:
        # Leave the other half for console=, ip= and the rest of the node's arguments.
        raise MirrorError(f"mirror kernel arguments take {len(line)} bytes; keep under 1024")
    return line


def parse_kernel_args(cmdline: str) -> MdBootArgs:
    """The inverse of render_kernel_args; other arguments on the line are ignored.

    Like the initramfs shell, a later cloudctl.aoe_wait overrides an earlier one.
    """
    arrays: list[MdBootSpec] = []
    aoe_wait, root = DEFAULT_AOE_WAIT, None
    for arg in cmdline.split():
        key, _, value = arg.partition("=")
        if key == "cloudctl.aoe_wait":
            if not value.isdigit() or int(value) > MAX_AOE_WAIT:
                raise MirrorError(f"{arg}: give 0-{MAX_AOE_WAIT} seconds")
            aoe_wait = int(value)
        elif key == "cloudctl.md":
            arrays.append(_parse_md_arg(arg, value))
        elif key == "root":
            root = value
    names = [spec.name for spec in arrays]
    if len(set(names)) != len(names):
        raise MirrorError(f"cloudctl.md names repeat: {names}")
    return MdBootArgs(tuple(arrays), aoe_wait, root)


def _parse_md_arg(arg: str, value: str) -> MdBootSpec:
    parts = value.split(":")
    if len(parts) != 3:
        raise MirrorError(f"{arg}: write cloudctl.md=NAME:UUID:eS.L,eS.L")
    name, uuid_hex, legs = parts
    check_name("cloudctl.md volume name", name)
    if not _HEX32_RE.fullmatch(uuid_hex):
        raise MirrorError(f"{arg}: the uuid must be 32 lowercase hex digits")
    targets = tuple(AoeLeg.parse(target).target for target in legs.split(","))
    if not 1 <= len(targets) <= 2 or len(set(targets)) != len(targets):
        raise MirrorError(f"{arg}: give one or two different AoE targets")
    return MdBootSpec(name, _mdadm_uuid(uuid_hex), targets)


# Initramfs ------------------------------------------------------------------------------------

_INITRAMFS_SCRIPT = r"""# cloudctl-md: assemble md RAID1 over AoE at boot (cloudctl.aoe.mdraid).
# Reads cloudctl.md=NAME:UUID:eS.L,eS.L (one per array) and cloudctl.aoe_wait=SECONDS from the
# kernel command line. POSIX sh (busybox ash, dash). CLOUDCTL_CMDLINE, CLOUDCTL_ETHERD and
# CLOUDCTL_SYS replace /proc/cmdline, /dev/etherd and /sys (for tests). Returns non-zero if an
# array could not be assembled at all; a missing leg only degrades it, and says so.
cloudctl_md_assemble() {
	_cc_etherd=${CLOUDCTL_ETHERD:-/dev/etherd}
	_cc_sys=${CLOUDCTL_SYS:-/sys}
	_cc_cmdline=$(cat "${CLOUDCTL_CMDLINE:-/proc/cmdline}") || return 1
	_cc_wait=@WAIT@
	_cc_specs=
	for _cc_arg in $_cc_cmdline; do
		case $_cc_arg in
		cloudctl.aoe_wait=*) _cc_wait=${_cc_arg#*=} ;;
		cloudctl.md=*) _cc_specs="$_cc_specs ${_cc_arg#*=}" ;;
		esac
	done
	[ -n "$_cc_specs" ] || return 0
	case $_cc_wait in
	'' | *[!0-9]*)
		echo "cloudctl-md: cloudctl.aoe_wait=$_cc_wait is not whole seconds; using @WAIT@"
		_cc_wait=@WAIT@
		;;
	esac
	# Check every argument before waiting, so a typo is reported at once, not after the wait.
	_cc_want=
	for _cc_spec in $_cc_specs; do
		_cc_md_split "$_cc_spec" || return 1
		_cc_want="$_cc_want $_cc_targets"
	done
	for _cc_mod in aoe md_mod raid1; do
		[ -d "$_cc_sys/module/$_cc_mod" ] || modprobe "$_cc_mod" 2>/dev/null ||
			echo "cloudctl-md: could not load module $_cc_mod"
	done
	# The aoe driver only talks on interfaces that are up; AoE needs no IP address.
	for _cc_if in "$_cc_sys"/class/net/*; do
		_cc_if=${_cc_if##*/}
		[ "$_cc_if" = lo ] || [ "$_cc_if" = "*" ] || ip link set "$_cc_if" up 2>/dev/null
	done
	_cc_waited=0
	while :; do
		_cc_missing=
		for _cc_t in $_cc_want; do
			[ -e "$_cc_etherd/$_cc_t" ] || _cc_missing="$_cc_missing $_cc_t"
		done
		[ -z "$_cc_missing" ] && break
		[ "$_cc_waited" -ge "$_cc_wait" ] && break
		# The driver asks once when loaded, maybe before a link had carrier: ask again.
		if [ $((_cc_waited % 5)) -eq 0 ]; then
			echo discover >"$_cc_etherd/discover" 2>/dev/null
		fi
		sleep 1
		_cc_waited=$((_cc_waited + 1))
	done
	_cc_rc=0
	for _cc_spec in $_cc_specs; do
		_cc_md_split "$_cc_spec"
		_cc_devs=
		_cc_gone=
		for _cc_t in $_cc_targets; do
			if [ -e "$_cc_etherd/$_cc_t" ]; then
				_cc_devs="$_cc_devs $_cc_etherd/$_cc_t"
			else
				_cc_gone="$_cc_gone $_cc_t"
			fi
		done
		if [ -z "$_cc_devs" ]; then
			echo "cloudctl-md: $_cc_name: FAILED: no leg of$_cc_targets appeared in ${_cc_wait}s"
			_cc_rc=1
			continue
		fi
		if [ -n "$_cc_gone" ]; then
			echo "cloudctl-md: $_cc_name: DEGRADED: leg$_cc_gone missing after ${_cc_wait}s," \
				"assembling from$_cc_devs"
		fi
		mkdir -p /dev/md 2>/dev/null
		# shellcheck disable=SC2086 # one word per device
		if mdadm --assemble "/dev/md/$_cc_name" --uuid="$_cc_uuid" --run $_cc_devs; then
			echo "cloudctl-md: $_cc_name: assembled from$_cc_devs"
		else
			echo "cloudctl-md: $_cc_name: FAILED: mdadm --assemble exited $?"
			_cc_rc=1
		fi
	done
	return $_cc_rc
}

# Splits NAME:UUID:eS.L,eS.L into _cc_name, _cc_uuid and _cc_targets (space separated).
_cc_md_split() {
	_cc_name=${1%%:*}
	_cc_rest=${1#*:}
	_cc_uuid=${_cc_rest%%:*}
	_cc_legs=${_cc_rest#*:}
	_cc_bad=
	case $1 in *:*:*:*) _cc_bad="too many fields" ;; *:*:*) ;; *) _cc_bad="too few fields" ;; esac
	case $_cc_name in
	'' | [!A-Za-z0-9]* | *[!A-Za-z0-9_.-]*) _cc_bad="${_cc_bad:-bad name}" ;;
	esac
	case $_cc_uuid in
	*[!0-9a-f]*) _cc_bad="${_cc_bad:-bad uuid}" ;;
	esac
	[ ${#_cc_uuid} -eq 32 ] || _cc_bad="${_cc_bad:-uuid needs 32 hex digits}"
	_cc_targets=
	_cc_ifs=$IFS
	IFS=,
	for _cc_t in $_cc_legs; do
		case $_cc_t in
		e[0-9]*.[0-9]*) case $_cc_t in *[!0-9e.]* | *.*.*) _cc_t_bad=1 ;; *) _cc_t_bad= ;; esac ;;
		*) _cc_t_bad=1 ;;
		esac
		[ -z "$_cc_t_bad" ] || _cc_bad="${_cc_bad:-bad target $_cc_t}"
		_cc_targets="$_cc_targets $_cc_t"
	done
	IFS=$_cc_ifs
	[ -n "$_cc_targets" ] || _cc_bad="${_cc_bad:-no targets}"
	if [ -n "$_cc_bad" ]; then
		echo "cloudctl-md: cloudctl.md=$1: $_cc_bad; want NAME:UUID:eS.L,eS.L"
		return 1
	fi
}
"""


def render_initramfs_script(default_wait: int = DEFAULT_AOE_WAIT) -> str:
    """Shell functions for an initramfs; call `cloudctl_md_assemble` after /proc, /sys, /dev.

    The script is the same for every node: what to assemble comes from the kernel arguments
    (render_kernel_args), so one initramfs serves every diskless node.
    """
    if not (isinstance(default_wait, int) and 0 <= default_wait <= MAX_AOE_WAIT):
        raise MirrorError(f"default_wait {default_wait!r}: use 0-{MAX_AOE_WAIT} seconds")
    return _INITRAMFS_SCRIPT.replace("@WAIT@", str(default_wait))
