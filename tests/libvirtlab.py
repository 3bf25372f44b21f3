"""Real libvirtd daemons as lab hardware nodes, for hypervisor integration tests.

Each LibvirtHost is a lab namespace with a bridge `br0` holding the host's address, linked by a
veth to the segment's switch bridge; guests' taps join the host's `br0`, so a migrated guest
stays on the same layer-2 segment. libvirtd runs in `unshare --mount --uts` with per-host copies
of its directories bind-mounted over the system ones (the host's own files are never written),
and the QEMU capability probe (~8 s) is cached across runs in var/cache/libvirtlab/.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt

from tests.guestkernel import cache_lock
from tests.netlab import PREFIX, Lab
from tests.netlab import cleanup_stale as cleanup_stale_namespaces

LIBVIRTD = "/usr/sbin/libvirtd"
MIGRATION_PORT = 49152  # the first port of qemu.conf's default migration_port_min..max
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = Path(os.environ.get("CLOUDCTL_TEST_CACHE", REPO_ROOT / "var" / "cache")) / "libvirtlab"
# The user and group Debian's libvirtd resolves at start even when qemu.conf says root;
# libvirt-daemon-system would create them. Missing, they go into a private /etc/passwd copy.
QEMU_ACCOUNT = "libvirt-qemu"
QEMU_ACCOUNT_ID = 64055  # what Debian's libvirt-daemon-system gives it
# libvirtd starts pinned to one CPU: it checks its cached QEMU capabilities against the CPUID
# of the CPU it runs on, whose APIC id differs per CPU, so unpinned it reprobes (~8 s) at random.
PROBE_CPU = min(os.sched_getaffinity(0))
STATE_DIR_PREFIX = "libvirt-"  # per-host state directories inside the Lab's workdir

LIBVIRTD_CONF = """\
# Written by tests/libvirtlab.py: lab only, no authentication.
listen_tls = 0
listen_tcp = 1
listen_addr = "{address}"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
# Two daemons with one UUID refuse to migrate: "Attempt to migrate guest to the same host".
host_uuid = "{host_uuid}"
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
# Written by tests/libvirtlab.py. Without virtlogd, qemu's stdio must go to a plain file.
stdio_handler = "file"
security_driver = "none"
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
migration_address = "{address}"
migration_host = "{address}"
"""

# Run by `ip netns exec NS unshare --mount --uts sh LAUNCHER`: every mount below stays in the
# new mount namespace. /var/lib/libvirt and friends may not exist on the host, so /var gets a
# per-host overlay to hold the mount points. The last line execs, so the pid the lab signals
# is libvirtd's own.
LAUNCHER = """\
set -e
state={state}
echo {hostname} > /proc/sys/kernel/hostname
mount -t overlay libvirtlab -o lowerdir=/var,upperdir=$state/var.upper,workdir=$state/var.work /var
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind $state/etc /etc/libvirt
mount --bind $state/lib /var/lib/libvirt
mount --bind $state/cache /var/cache/libvirt
mount --bind $state/log /var/log/libvirt
mount --bind $state/run /run
[ ! -e $state/passwd ] || mount --bind $state/passwd /etc/passwd
[ ! -e $state/group ] || mount --bind $state/group /etc/group
exec taskset -c {cpu} {libvirtd} --listen -f /etc/libvirt/libvirtd.conf
"""


class LibvirtLabError(Exception):
    """A lab libvirtd did not start or answer; the message has the end of its log."""


@dataclass(frozen=True)
class Segment:
    """The shared layer-2 segment: a bridge in a switch namespace that owns `address`."""

    ns: str
    bridge: str
    network: ipaddress.IPv4Network
    address: str  # the switch namespace's own address: run pingers and clients here

    def cidr(self, address: str) -> str:
        return f"{address}/{self.network.prefixlen}"


def segment(lab: Lab, subnet: str = "10.77.0.0/24", name: str = "sw") -> Segment:
    """A switch namespace with bridge br0 and the subnet's first address on it."""
    network = ipaddress.IPv4Network(subnet)
    ns = lab.netns(name)
    address = str(network.network_address + 1)
    bridge = addressed_bridge(lab, ns, "br0", f"{address}/{network.prefixlen}")
    return Segment(ns, bridge, network, address)


def addressed_bridge(lab: Lab, ns: str, name: str, cidr: str) -> str:
    """A lab bridge with an IPv4 address and a fixed MAC derived from it.

    A Linux bridge without an assigned MAC takes the lowest MAC among its ports, and changes
    it whenever a port comes or goes. libvirt's taps are fe:54:..., veths get random MACs; on
    ~1 in 50 hosts the uplink's is higher, the host's address moves to the tap's MAC when a
    guest arrives, and peers keep sending to the old one: a migration to that host stalled
    until their ARP entry expired (seen: >10 s, "migration did not start copying memory").
    """
    lab.bridge(ns, name)
    address = ipaddress.IPv4Address(cidr.partition("/")[0])
    mac = "02:00:" + ":".join(f"{byte:02x}" for byte in address.packed)  # locally administered
    lab.run(ns, ["ip", "link", "set", name, "address", mac])
    lab.address(ns, name, cidr)
    return name


class LibvirtHost:
    """One lab hardware node: a namespace on the segment and a libvirtd serving it.

    The constructor makes the namespace and links; start() runs libvirtd and returns once its
    API answers. Connect from the test process with connect() (the Unix socket, which needs no
    route into the lab); `uri` is the TCP address for peers on the segment (peer-to-peer
    migration, a controller running in the switch namespace). The Lab's close() stops
    libvirtd, kills the guests (they are processes in this namespace) and removes the state.
    """

    def __init__(
        self, lab: Lab, segment: Segment, name: str, address: str, *, bridge: str = "br0"
    ) -> None:
        cleanup_stale()
        if ipaddress.IPv4Address(address) not in segment.network:
            raise LibvirtLabError(f"{address} is not in the segment's {segment.network}")
        self.lab = lab
        self.segment = segment
        self.name = name
        self.address = address
        self.bridge = bridge
        self.host_uuid = str(uuid.uuid4())
        self.state_dir = lab.workdir / f"{STATE_DIR_PREFIX}{name}"
        self.log = self.state_dir / "libvirtd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0  # how long the last start() took
        self.ns = lab.netns(name)
        addressed_bridge(lab, self.ns, bridge, segment.cidr(address))
        lab.veth(
            self.ns,
            "uplink",
            segment.ns,
            f"to-{name}"[:15],
            bridge_a=bridge,
            bridge_b=segment.bridge,
        )
        self._write_state()

    # Addresses ------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The remote URI for clients on the segment (not reachable from the test process)."""
        return f"qemu+tcp://{self.address}/system"

    @property
    def local_uri(self) -> str:
        """The Unix-socket URI, usable from the test process in the host namespace."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def migration_uri(self) -> str:
        """VIR_MIGRATE_PARAM_URI for migrations to this host: where its incoming qemu listens."""
        return f"tcp://{self.address}:{MIGRATION_PORT}"

    @property
    def socket(self) -> Path:
        return self.state_dir / "run" / "libvirt" / "libvirt-sock"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # Life cycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> LibvirtHost:
        """Start libvirtd and wait until its API answers (a restart finds running guests)."""
        if self.running:
            raise LibvirtLabError(f"libvirtd on {self.name} already runs (pid {self.pid})")
        if not Path(LIBVIRTD).exists():
            raise LibvirtLabError(f"{LIBVIRTD} not found: install libvirt-daemon-driver-qemu")
        begun = time.monotonic()
        _seed_capabilities(self.state_dir / "cache" / "qemu" / "capabilities")
        self.socket.unlink(missing_ok=True)
        argv = ["unshare", "--mount", "--uts", "--propagation", "private"]
        argv += ["sh", str(self.state_dir / "launch.sh")]
        self.proc = self.lab.spawn(self.ns, argv, self.log)
        self._wait_ready(begun + timeout)
        self.start_seconds = time.monotonic() - begun
        return self

    def connect(self) -> libvirt.virConnect:
        """A new connection over the Unix socket, for the caller to close."""
        try:
            return libvirt.open(self.local_uri)
        except libvirt.libvirtError as exc:
            raise LibvirtLabError(
                f"cannot connect to {self.name}: {exc}{self._log_tail()}"
            ) from exc

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM libvirtd (SIGKILL after timeout); its guests keep running, as on a restart."""
        if self.proc is None:
            return 0
        code = self.lab.stop(self.proc, timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL libvirtd alone, by pid: a daemon crash; guests keep running."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def crash(self) -> list[int]:
        """SIGKILL every process of this node (libvirtd and its guests): the node lost power.

        /run goes too, as a tmpfs would, so the next start() finds no domain status to clean
        up (which it does in the background: a migration to it meanwhile fails with "domain
        is already being removed"). Persistent definitions stay. Returns the pids killed.
        """
        killed: set[int] = set()
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.02)
        else:
            raise LibvirtLabError(f"processes {self.pids()} in {self.ns} survived SIGKILL")
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc = None
        run = self.state_dir / "run"
        shutil.rmtree(run)
        run.mkdir()
        return sorted(killed)

    def pids(self) -> list[int]:
        """Every process in this node's namespace: libvirtd and the qemu of each guest."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.ns], capture_output=True, text=True, check=True
        ).stdout
        return [int(pid) for pid in out.split()]

    # Internals ------------------------------------------------------------------------------

    def _write_state(self) -> None:
        state = self.state_dir
        for sub in ("etc", "run", "lib", "cache/qemu/capabilities", "log", "var.upper", "var.work"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        # libvirt.conf and libvirt-admin.conf as the host has them; ours for the daemons.
        if Path("/etc/libvirt").is_dir():
            shutil.copytree("/etc/libvirt", state / "etc", dirs_exist_ok=True)
        (state / "etc" / "libvirtd.conf").write_text(
            LIBVIRTD_CONF.format(address=self.address, host_uuid=self.host_uuid)
        )
        (state / "etc" / "qemu.conf").write_text(QEMU_CONF.format(address=self.address))
        _write_accounts(state)
        (state / "launch.sh").write_text(
            LAUNCHER.format(state=state, hostname=self.name, libvirtd=LIBVIRTD, cpu=PROBE_CPU)
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise LibvirtLabError(
                    f"libvirtd on {self.name} exited {self.proc.returncode}{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LibvirtLabError(f"libvirtd on {self.name} made no socket{self._log_tail()}")
            time.sleep(0.02)
        # The first connection waits for the QEMU capability probe unless the cache was valid.
        conn = None
        while conn is None:
            try:
                conn = libvirt.open(self.local_uri)
            except libvirt.libvirtError as exc:
                # The socket file appears a moment before libvirtd accepts on it.
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise LibvirtLabError(
                        f"libvirtd on {self.name} does not answer: {exc}{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)
        try:
            conn.getVersion()
        finally:
            conn.close()
        _save_capabilities(self.state_dir / "cache" / "qemu" / "capabilities")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of libvirtd's log (warnings and errors only, see LIBVIRTD_CONF)."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        return f"; {self.log} ends:\n{self.log_tail()}"


def _write_accounts(state: Path) -> None:
    try:
        pwd.getpwnam(QEMU_ACCOUNT)
        return
    except KeyError:
        pass
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    ident = QEMU_ACCOUNT_ID
    (state / "passwd").write_text(
        passwd.rstrip("\n")
        + f"\n{QEMU_ACCOUNT}:x:{ident}:{ident}:lab:/var/lib/libvirt:/bin/false\n"
    )
    if not re.search(rf"^{QEMU_ACCOUNT}:", group, re.MULTILINE):
        group = group.rstrip("\n") + f"\n{QEMU_ACCOUNT}:x:{ident}:\n"
    (state / "group").write_text(group)


# The capability cache -----------------------------------------------------------------------
# libvirtd checks each cached file against the qemu and libvirtd binaries, the kernel and the
# CPU, and probes again when anything changed, so a stale copy costs time, never correctness.


def _seed_capabilities(target: Path) -> None:
    source = CACHE_DIR / "qemu-capabilities"
    if not source.is_dir():
        return
    for path in source.glob("*.xml"):
        shutil.copy2(path, target / path.name)


def _save_capabilities(source: Path) -> None:
    target = CACHE_DIR / "qemu-capabilities"
    target.mkdir(parents=True, exist_ok=True)
    with cache_lock(CACHE_DIR / ".lock"):
        for path in source.glob("*.xml"):
            saved = target / path.name
            data = path.read_bytes()
            if saved.exists() and saved.read_bytes() == data:
                continue
            tmp = saved.with_name(saved.name + ".tmp")
            tmp.write_bytes(data)
            shutil.copystat(path, tmp)
            tmp.rename(saved)


# Leftovers ----------------------------------------------------------------------------------


def cleanup_stale() -> list[Path]:
    """Remove lab workdirs holding libvirt state whose creating process is gone.

    netlab.cleanup_stale() first kills what still runs in their namespaces (libvirtd, qemu),
    which also ends the private mount namespaces that used the state directories.
    """
    cleanup_stale_namespaces()
    removed = []
    for workdir in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*-*"):
        parts = workdir.name.split("-")
        if not parts[1].isdigit() or not any(workdir.glob(f"{STATE_DIR_PREFIX}*/launch.sh")):
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed
