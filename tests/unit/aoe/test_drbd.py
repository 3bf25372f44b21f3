"""cloudctl.aoe.drbd: resource files, drbdsetup-84 commands and the status parsers.

The commands are checked against drbd-utils' own drbdadm-84 in dry-run mode (it needs no DRBD
kernel); the status texts are real captures from two DRBD 8.4.11 guests (fixtures/README.md).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudctl.aoe.drbd import (
    DRBDSETUP,
    DrbdHost,
    DrbdResource,
    attach_commands,
    connect_command,
    create_md_command,
    down_command,
    initial_sync_command,
    parse_drbdadm_status,
    parse_proc_drbd,
    render_resource,
    resync_rate_command,
    role_command,
    skip_initial_sync_command,
    up_commands,
    verify_command,
)
from cloudctl.aoe.mirror import MirrorError

FIXTURES = Path(__file__).parent / "fixtures"
DRBDADM_84 = "/usr/lib/drbd/drbdadm-84"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def pair(secret: str = "s3cret", family: str = "ipv4", **options: object) -> DrbdResource:
    addresses = ("10.0.0.1", "10.0.0.2") if family == "ipv4" else ("fd00::1", "fd00::2")
    return DrbdResource(
        name="vol7",
        hosts=(
            DrbdHost("store-a", addresses[0], 7790, 3, "/dev/vg0/vol7"),
            DrbdHost("store-b", addresses[1], 7790, 4, "/dev/vg0/vol7"),
        ),
        secret=secret,
        **options,  # type: ignore[arg-type]
    )


# Resource file ---------------------------------------------------------------------------------


def test_render_resource():
    assert (
        render_resource(pair())
        == """\
# DRBD 8.4 resource vol7, rendered by cloudctl: edits are overwritten.
resource vol7 {
  net {
    protocol C;
    allow-two-primaries yes;
    cram-hmac-alg sha256;
    shared-secret "s3cret";
    verify-alg sha256;
  }
  on store-a {
    device /dev/drbd3;
    disk /dev/vg0/vol7;
    address 10.0.0.1:7790;
    meta-disk internal;
  }
  on store-b {
    device /dev/drbd4;
    disk /dev/vg0/vol7;
    address 10.0.0.2:7790;
    meta-disk internal;
  }
}
"""
    )


def test_render_is_deterministic_and_quotes_the_secret():
    tricky = pair(secret='a "b" \\ c; } #', family="ipv6", allow_two_primaries=False)
    text = render_resource(tricky)
    assert text == render_resource(tricky)
    assert 'shared-secret "a \\"b\\" \\\\ c; } #";' in text
    assert "address ipv6 [fd00::1]:7790;" in text
    assert "allow-two-primaries" not in text


def test_secret_stays_out_of_repr():
    assert "s3cret" not in repr(pair())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: pair(secret=""), "secret is required"),
        (lambda: pair(secret="x" * 65), "1-64"),
        (lambda: pair(secret="new\nline"), "printable"),
        (lambda: pair(protocol="D"), "protocol"),
        (lambda: pair(cram_hmac_alg="crc32"), "cram-hmac-alg"),
        (lambda: pair(verify_alg="none"), "verify-alg"),
        (lambda: DrbdHost("a", "10.0.0.1", 0, 0, "/dev/sda"), "port"),
        (lambda: DrbdHost("a", "10.0.0.1", 7789, 1 << 20, "/dev/sda"), "minor"),
        (lambda: DrbdHost("a", "10.0.0.300", 7789, 0, "/dev/sda"), "address"),
        (lambda: DrbdHost("a b", "10.0.0.1", 7789, 0, "/dev/sda"), "host name"),
        (lambda: DrbdHost("a", "10.0.0.1", 7789, 0, "sda"), "under /dev"),
        (lambda: DrbdHost("a", "10.0.0.1", 7789, 0, "/dev/sd a;"), "under /dev"),
        (lambda: DrbdHost("a", "10.0.0.1", 7789, 0, "/dev/../etc/passwd"), "under /dev"),
    ],
)
def test_invalid_inputs_are_refused(build, message):
    with pytest.raises(MirrorError, match=message):
        build()


def test_invalid_pairs_are_refused():
    a = DrbdHost("a", "10.0.0.1", 7789, 0, "/dev/sda")
    with pytest.raises(MirrorError, match="both hosts are named"):
        DrbdResource("r", (a, DrbdHost("a", "10.0.0.2", 7789, 0, "/dev/sda")), "x")
    with pytest.raises(MirrorError, match="both hosts use"):
        DrbdResource("r", (a, DrbdHost("b", "10.0.0.1", 7789, 0, "/dev/sda")), "x")
    with pytest.raises(MirrorError, match="mixes"):
        DrbdResource("r", (a, DrbdHost("b", "fd00::2", 7789, 0, "/dev/sda")), "x")
    with pytest.raises(MirrorError, match="DRBD resource"):
        DrbdResource("r 1", (a, DrbdHost("b", "10.0.0.2", 7789, 0, "/dev/sda")), "x")
    with pytest.raises(MirrorError, match="no host"):
        pair().host("store-c")


# Commands --------------------------------------------------------------------------------------


def test_commands():
    res = pair()
    assert create_md_command(res, "store-b") == [
        "drbdmeta", "4", "v08", "/dev/vg0/vol7", "internal", "create-md"
    ]  # fmt: skip
    assert create_md_command(res, "store-b", force=True)[-1] == "--force"
    assert up_commands(res, "store-a") == [
        *attach_commands(res, "store-a"),
        connect_command(res, "store-a"),
    ]
    assert connect_command(res, "store-b")[3:5] == ["ipv4:10.0.0.2:7790", "ipv4:10.0.0.1:7790"]
    assert initial_sync_command(res, "store-a") == [DRBDSETUP, "primary", "3", "--force"]
    assert skip_initial_sync_command(res, "store-a")[-1] == "--clear-bitmap"
    assert role_command(res, "store-b", "secondary") == [DRBDSETUP, "secondary", "4"]
    assert resync_rate_command(res, "store-a", 4096)[-1] == "--resync-rate=4096k"
    with pytest.raises(MirrorError):
        role_command(res, "store-b", "boss")
    with pytest.raises(MirrorError):
        resync_rate_command(res, "store-a", 0)


def drbdadm_dry_run(tmp_path: Path, res: DrbdResource, host: str, *command: str) -> list[list[str]]:
    """What drbd-utils' drbdadm-84 would run on `host` for `command`, from our resource file."""
    config = tmp_path / "drbd.conf"
    config.write_text(render_resource(res))
    # drbdadm-84 picks its "on" section by uname -n: give it its own UTS namespace.
    script = f"hostname {host} && exec {DRBDADM_84} -c {config} -d {' '.join(command)}"
    result = subprocess.run(
        ["unshare", "--uts", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


needs_drbdadm = pytest.mark.skipif(
    not (os.path.exists(DRBDADM_84) and os.geteuid() == 0 and shutil.which("unshare")),
    reason="needs drbd-utils (drbdadm-84) and root for unshare --uts",
)


@needs_drbdadm
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("host", ["store-a", "store-b"])
def test_commands_are_what_drbdadm_84_runs(tmp_path, family, host):
    res = pair(secret='with "quotes" \\ and spaces', family=family)
    minor = str(res.host(host).minor)
    assert drbdadm_dry_run(tmp_path, res, host, "up", "vol7") == up_commands(res, host)
    assert drbdadm_dry_run(tmp_path, res, host, "create-md", "--force", "vol7") == [
        create_md_command(res, host, force=True)
    ]
    assert drbdadm_dry_run(tmp_path, res, host, "primary", "--force", "vol7") == [
        initial_sync_command(res, host)
    ]
    assert drbdadm_dry_run(tmp_path, res, host, "new-current-uuid", "--clear-bitmap", "vol7") == [
        skip_initial_sync_command(res, host)
    ]
    assert drbdadm_dry_run(tmp_path, res, host, "secondary", "vol7") == [
        role_command(res, host, "secondary")
    ]
    assert drbdadm_dry_run(tmp_path, res, host, "verify", "vol7") == [verify_command(res, host)]
    assert drbdadm_dry_run(tmp_path, res, host, "down", "vol7") == [down_command(res)]
    rate = ["disk-options", "--c-plan-ahead=0", "--resync-rate=4096k", "vol7"]
    assert drbdadm_dry_run(tmp_path, res, host, *rate) == [resync_rate_command(res, host, 4096)]
    assert minor in up_commands(res, host)[1]


@needs_drbdadm
def test_drbdadm_reads_back_the_secret_and_options(tmp_path):
    res = pair(secret='x"y\\z', allow_two_primaries=False)
    (connect,) = drbdadm_dry_run(tmp_path, res, "store-a", "connect", "vol7")
    assert "--shared-secret=" + 'x"y\\z' in connect
    assert not any(arg.startswith("--allow-two-primaries") for arg in connect)
    assert connect == connect_command(res, "store-a")


# /proc/drbd and drbdadm status ----------------------------------------------------------------


def test_proc_drbd_connected_and_in_sync():
    proc = parse_proc_drbd(fixture("drbd-proc-dual-primary.txt"))
    assert proc.version == "8.4.11"
    device = proc.minor(0)
    assert (device.cstate, device.connection, device.replication) == (
        "Connected",
        "Connected",
        "Established",
    )
    assert (device.role, device.peer_role, device.disk, device.peer_disk) == (
        "Primary",
        "Primary",
        "UpToDate",
        "UpToDate",
    )
    assert device.in_sync and device.protocol == "C" and device.out_of_sync_kib == 0
    assert device.sync is None
    with pytest.raises(MirrorError):
        proc.minor(1)


def test_proc_drbd_sync_in_flight():
    source = parse_proc_drbd(fixture("drbd-proc-syncsource.txt")).minor(0)
    assert (source.replication, source.role, source.peer_disk) == (
        "SyncSource",
        "Primary",
        "Inconsistent",
    )
    assert source.connected and not source.in_sync
    sync = source.sync
    assert sync is not None and sync.action == "sync"
    assert sync.total_kib == 32728 and sync.done_kib + sync.out_of_sync_kib == 32728
    assert sync.out_of_sync_kib == source.out_of_sync_kib
    assert 0 < sync.percent < 100 and sync.finish_s is not None and sync.speed_kib_s > 0
    target = parse_proc_drbd(fixture("drbd-proc-synctarget.txt")).minor(0)
    # The target's line has 8.4's "want:" figure too.
    assert "want:" in fixture("drbd-proc-synctarget.txt")
    assert target.replication == "SyncTarget" and target.disk == "Inconsistent"
    assert target.sync.speed_kib_s > 0


def test_proc_drbd_without_peer_and_before_sync():
    waiting = parse_proc_drbd(fixture("drbd-proc-wfconnection.txt")).minor(0)
    assert (waiting.cstate, waiting.connection, waiting.replication) == (
        "WFConnection",
        "Connecting",
        "Off",
    )
    assert (waiting.peer_role, waiting.peer_disk) == ("Unknown", "DUnknown")
    assert waiting.out_of_sync_kib == 2048 and not waiting.connected
    fresh = parse_proc_drbd(fixture("drbd-proc-connected-inconsistent.txt")).minor(0)
    assert fresh.connected and not fresh.in_sync and fresh.out_of_sync_kib == 32728


def test_proc_drbd_forms_not_captured_here():
    # Other 8.4 shapes: unconfigured and StandAlone/Diskless minors, a verify, sizes in MiB.
    text = """version: 8.4.11 (api:1/proto:86-101)
srcversion: F73C670A7EC572DB9CF3E5B
 0: cs:VerifyS ro:Secondary/Secondary ds:UpToDate/UpToDate C r-----
    ns:0 nr:0 dw:0 dr:1024 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
\t[===>................] verified: 20.0% (2048/2560)M
\tfinish: 1:02:03 speed: 1,234 (1,100) K/sec
 1: cs:Unconfigured
 2: cs:StandAlone ro:Secondary/Unknown ds:Diskless/DUnknown   r-----
    ns:0 nr:0 dw:0 dr:0 al:0 bm:0 lo:0 pe:0 ua:0 ap:0 ep:1 wo:f oos:0
"""
    proc = parse_proc_drbd(text)
    assert [d.minor for d in proc.devices] == [0, 2]
    verify = proc.minor(0)
    assert verify.replication == "VerifyS" and verify.sync.action == "verify"
    assert verify.sync.total_kib == 2560 * 1024 and verify.sync.done_kib == 512 * 1024
    assert verify.sync.finish_s == 3723 and verify.sync.speed_kib_s == 1234
    alone = proc.minor(2)
    assert (alone.connection, alone.disk, alone.protocol) == ("StandAlone", "Diskless", None)
    with pytest.raises(MirrorError, match="DRBD 9"):
        parse_proc_drbd("version: 9.2.4 (api:2/proto:86-122)\n")


def test_drbdadm_status_plain_and_verbose():
    plain = parse_drbdadm_status(fixture("drbd-drbdadm-status-dual-primary.txt"))
    verbose = parse_drbdadm_status(fixture("drbd-status-dual-primary.txt"))
    for (device,) in (plain, verbose):
        assert (device.resource, device.role, device.peer_role) == ("r0", "Primary", "Primary")
        assert device.in_sync and device.peer == "peer"  # 8.4 knows no peer node names
    assert (verbose[0].minor, verbose[0].volume, verbose[0].out_of_sync_kib) == (0, 0, 0)
    assert (plain[0].minor, plain[0].out_of_sync_kib) == (None, None)


def test_drbdadm_status_sync_and_connecting():
    (source,) = parse_drbdadm_status(fixture("drbd-status-syncsource.txt"))
    assert (source.replication, source.peer_disk) == ("SyncSource", "Inconsistent")
    assert 0 < source.sync.percent < 100 and source.sync.out_of_sync_kib > 0
    (target,) = parse_drbdadm_status(fixture("drbd-status-synctarget.txt"))
    assert (target.replication, target.disk, target.peer_role) == (
        "SyncTarget",
        "Inconsistent",
        "Primary",
    )
    (waiting,) = parse_drbdadm_status(fixture("drbd-status-wfconnection.txt"))
    assert (waiting.connection, waiting.peer_role, waiting.peer_disk) == (
        "Connecting",
        "Unknown",
        "DUnknown",
    )


@pytest.mark.parametrize(
    ("proc", "status"),
    [
        ("drbd-proc-connected-inconsistent.txt", "drbd-status-connected-inconsistent.txt"),
        ("drbd-proc-syncsource.txt", "drbd-status-syncsource.txt"),
        ("drbd-proc-synctarget.txt", "drbd-status-synctarget.txt"),
        ("drbd-proc-dual-primary.txt", "drbd-status-dual-primary.txt"),
        ("drbd-proc-wfconnection.txt", "drbd-status-wfconnection.txt"),
    ],
)
def test_proc_drbd_and_drbdadm_status_agree(proc, status):
    """Read a moment apart in the same state, both sources give the same model."""
    a = parse_proc_drbd(fixture(proc)).minor(0)
    (b,) = parse_drbdadm_status(fixture(status))
    same = ("connection", "replication", "role", "peer_role", "disk", "peer_disk")
    assert [getattr(a, f) for f in same] == [getattr(b, f) for f in same]
    assert (a.sync is None) == (b.sync is None)


# DRBD 9 layouts (no DRBD 9 kernel here): written after LINBIT's documented format.
DRBD9_TWO_VOLUMES = """\
web role:Secondary
  volume:0 disk:UpToDate
  volume:1 disk:Inconsistent
  store-b role:Primary
    volume:0 peer-disk:UpToDate
    volume:1 replication:SyncTarget peer-disk:UpToDate done:61.50

db role:Primary
  disk:UpToDate
  store-b connection:StandAlone
"""


def test_drbd9_status_with_volumes_and_standalone():
    web0, web1, db = parse_drbdadm_status(DRBD9_TWO_VOLUMES)
    assert (web0.resource, web0.volume, web0.in_sync, web0.peer) == ("web", 0, True, "store-b")
    assert (web1.volume, web1.replication, web1.sync.percent) == (1, "SyncTarget", 61.5)
    assert (db.resource, db.connection, db.replication, db.peer_role) == (
        "db",
        "StandAlone",
        "Off",
        "Unknown",
    )


def test_drbd9_status_refuses_what_a_pair_cannot_be():
    three_nodes = "r role:Secondary\n  disk:UpToDate\n  b role:Secondary\n  c role:Secondary\n"
    with pytest.raises(MirrorError, match="2 peers"):
        parse_drbdadm_status(three_nodes)
    with pytest.raises(MirrorError, match="before any resource"):
        parse_drbdadm_status("  disk:UpToDate\n")
    assert parse_drbdadm_status("") == ()
