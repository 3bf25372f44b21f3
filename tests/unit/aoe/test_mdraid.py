"""cloudctl.aoe.mdraid: plans, commands, kernel arguments, the initramfs script and the parsers.

Status texts are real captures (fixtures/README.md); the initramfs script runs under busybox sh
and dash with stub mdadm/modprobe/ip, against a fake /dev/etherd and /sys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudctl.aoe.mdraid import (
    AoeLeg,
    MdBootArgs,
    MdBootSpec,
    MirrorPlan,
    assemble_command,
    create_command,
    fail_leg_command,
    parse_kernel_args,
    parse_md_sysfs,
    parse_mdadm_detail,
    parse_mdstat,
    remove_lost_legs_command,
    render_initramfs_script,
    render_kernel_args,
    return_leg_commands,
    sysfs_progress_paths,
    volume_uuid,
)
from cloudctl.aoe.mirror import MirrorError

FIXTURES = Path(__file__).parent / "fixtures"
# The captures were made with these plans (fixtures/capture_mdraid.py).
VOL1 = MirrorPlan.for_volume("vol1", [AoeLeg(1, 1, "store-a"), AoeLeg(2, 1, "store-b")])
VOL2 = MirrorPlan.for_volume("vol2", [AoeLeg(1, 2, "store-a"), AoeLeg(2, 2, "store-b")])


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# Plans -----------------------------------------------------------------------------------------


def test_volume_uuid_is_deterministic_and_is_what_mdadm_recorded():
    assert volume_uuid("vol1") == volume_uuid("vol1") == VOL1.uuid
    assert volume_uuid("vol1") != volume_uuid("vol2")
    # mdadm --create --uuid=... stored it as given: --examine and --detail print the same.
    assert f"Array UUID : {VOL1.uuid}" in fixture("examine-e1.1.txt")
    assert parse_mdadm_detail(fixture("detail-clean.txt")).uuid == VOL1.uuid


def test_plan_devices_and_leg_lookup():
    assert VOL1.md_device == "/dev/md/vol1"
    assert VOL1.devices == ("/dev/etherd/e1.1", "/dev/etherd/e2.1")
    assert VOL1.leg("store-b") == VOL1.leg("e2.1") == VOL1.leg("/dev/etherd/e2.1")
    with pytest.raises(MirrorError, match="no leg"):
        VOL1.leg("e3.1")
    assert AoeLeg.parse("/dev/etherd/e65534.254") == AoeLeg(65534, 254)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AoeLeg(0xFFFF, 1), "shelf"),
        (lambda: AoeLeg(1, 255), "slot"),
        (lambda: AoeLeg(1, 1, "bad node!"), "host name"),
        (lambda: AoeLeg.parse("e1"), "eSHELF.SLOT"),
        (lambda: MirrorPlan.for_volume("vol", [AoeLeg(1, 1, "a"), AoeLeg(1, 1, "b")]), "both legs"),
        (
            lambda: MirrorPlan.for_volume("vol", [AoeLeg(1, 1, "a"), AoeLeg(2, 1, "a")]),
            "storage node",
        ),
        (lambda: MirrorPlan.for_volume("vol", [AoeLeg(1, 1)]), "not enough"),
        (lambda: MirrorPlan.for_volume("-vol", [AoeLeg(1, 1), AoeLeg(2, 1)]), "volume name"),
        (lambda: MirrorPlan.for_volume("x" * 33, [AoeLeg(1, 1), AoeLeg(2, 1)]), "1-32"),
        (lambda: MirrorPlan("v", (AoeLeg(1, 1), AoeLeg(2, 1)), "abc"), "32 hex"),
        (lambda: MirrorPlan("v", (AoeLeg(1, 1), AoeLeg(2, 1)), "0" * 32, "1.2"), "offset 0"),
    ],
)
def test_invalid_plans_are_refused(build, message):
    with pytest.raises((MirrorError, ValueError), match=message):
        build()


def test_plan_normalises_any_mdadm_uuid_spelling():
    plan = MirrorPlan("v", (AoeLeg(1, 1), AoeLeg(2, 1)), "0123456789ABCDEF-0123456789abcdef")
    assert plan.uuid == "01234567:89abcdef:01234567:89abcdef"


# Commands --------------------------------------------------------------------------------------


def test_create_command_for_fresh_and_used_legs():
    used = create_command(VOL1, fresh=False)
    assert used == [
        "mdadm", "--create", "/dev/md/vol1", "--run", "--level=1", "--raid-devices=2",
        "--metadata=1.0", "--name=vol1", f"--uuid={VOL1.uuid}", "--homehost=<none>",
        "--bitmap=internal", "/dev/etherd/e1.1", "/dev/etherd/e2.1",
    ]  # fmt: skip
    fresh = create_command(VOL1, fresh=True)
    assert fresh == [*used[:-2], "--assume-clean", *used[-2:]]
    no_bitmap = MirrorPlan.for_volume("v", list(VOL1.legs), bitmap=False)
    assert "--bitmap=none" in create_command(no_bitmap, fresh=True)


def test_homehost_none_gives_a_plain_array_name():
    # Created with --homehost=<none>: the superblock name has no "HOST:" prefix.
    assert parse_mdadm_detail(fixture("detail-clean.txt")).name == "vol1"
    assert "Name : vol1\n" in fixture("examine-e1.1.txt")


def test_maintenance_commands():
    assert assemble_command(VOL1) == [
        "mdadm", "--assemble", "/dev/md/vol1", f"--uuid={VOL1.uuid}", "--run",
        "/dev/etherd/e1.1", "/dev/etherd/e2.1",
    ]  # fmt: skip
    assert assemble_command(VOL1.boot_spec(), ["/dev/etherd/e1.1"])[-1] == "/dev/etherd/e1.1"
    assert fail_leg_command(VOL1, "store-b") == [
        "mdadm", "/dev/md/vol1", "--fail", "/dev/etherd/e2.1", "--remove", "/dev/etherd/e2.1"
    ]  # fmt: skip
    assert remove_lost_legs_command(VOL1)[2:] == ["--remove", "failed", "--remove", "detached"]
    back = return_leg_commands(VOL1, "e2.1")
    assert back.re_add == ("mdadm", "/dev/md/vol1", "--re-add", "/dev/etherd/e2.1")
    assert back.fallback == ("mdadm", "/dev/md/vol1", "--add", "/dev/etherd/e2.1")
    assert back.shell() == (
        "mdadm /dev/md/vol1 --re-add /dev/etherd/e2.1 || mdadm /dev/md/vol1 --add /dev/etherd/e2.1"
    )


def test_sysfs_progress_paths_and_parser():
    paths = sysfs_progress_paths("md127")
    assert paths["sync_completed"] == "/sys/block/md127/md/sync_completed"
    with pytest.raises(MirrorError):
        sysfs_progress_paths("../etc")
    action, completed, speed = fixture("sysfs-resync.txt").splitlines()
    progress = parse_md_sysfs(action, completed, speed)
    assert progress is not None
    assert progress.action == "resync"
    assert progress.total_kib == 49088  # sectors / 2: the array size mdstat shows
    assert progress.done_kib == int(completed.split()[0]) // 2
    assert progress.speed_kib_s == int(speed)
    assert parse_md_sysfs("idle\n", "none\n", "none\n") is None
    assert parse_md_sysfs("recover", "10 / 20", "5").action == "recovery"


# Kernel arguments ------------------------------------------------------------------------------


def test_kernel_args_format_and_round_trip():
    line = render_kernel_args([VOL1, VOL2], aoe_wait=30, root="vol1")
    hex1 = VOL1.uuid.replace(":", "")
    hex2 = VOL2.uuid.replace(":", "")
    assert line == (
        f"cloudctl.md=vol1:{hex1}:e1.1,e2.1 cloudctl.md=vol2:{hex2}:e1.2,e2.2 "
        "cloudctl.aoe_wait=30 root=/dev/md/vol1"
    )
    parsed = parse_kernel_args(f"console=ttyS0 {line} quiet")
    assert parsed == MdBootArgs((VOL1.boot_spec(), VOL2.boot_spec()), 30, "/dev/md/vol1")


def test_kernel_args_rules():
    assert parse_kernel_args("quiet") == MdBootArgs((), 30, None)
    # As in the shell, the last cloudctl.aoe_wait counts.
    assert parse_kernel_args("cloudctl.aoe_wait=5 cloudctl.aoe_wait=7").aoe_wait == 7
    spec = parse_kernel_args(f"cloudctl.md=solo:{'a' * 32}:e3.4").arrays[0]
    assert spec == MdBootSpec("solo", "aaaaaaaa:aaaaaaaa:aaaaaaaa:aaaaaaaa", ("e3.4",))
    with pytest.raises(MirrorError, match="repeat"):
        render_kernel_args([VOL1, VOL1])
    with pytest.raises(MirrorError, match="root volume"):
        render_kernel_args([VOL1], root="vol2")
    with pytest.raises(MirrorError, match="aoe_wait"):
        render_kernel_args([VOL1], aoe_wait=-1)
    many = [
        MirrorPlan.for_volume(f"volume-{i:02}", [AoeLeg(1, i), AoeLeg(2, i)]) for i in range(30)
    ]
    with pytest.raises(MirrorError, match="bytes"):
        render_kernel_args(many)


@pytest.mark.parametrize(
    "bad",
    [
        "cloudctl.md=vol1:e1.1,e2.1",
        f"cloudctl.md=vol1:{'A' * 32}:e1.1",
        f"cloudctl.md=vol1:{'a' * 31}:e1.1",
        f"cloudctl.md=vol1:{'a' * 32}:e1.1,e1.1",
        f"cloudctl.md=vol1:{'a' * 32}:e1.1,e2.1,e3.1",
        f"cloudctl.md=vol1:{'a' * 32}:x1.1",
        f"cloudctl.md=v/1:{'a' * 32}:e1.1",
        f"cloudctl.md=v:{'a' * 32}:e1.1 cloudctl.md=v:{'b' * 32}:e2.1",
        "cloudctl.aoe_wait=soon",
        "cloudctl.aoe_wait=3601",
    ],
)
def test_kernel_args_parser_refuses(bad):
    with pytest.raises(MirrorError):
        parse_kernel_args(bad)


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}", fullmatch=True)
legs = st.tuples(st.integers(0, 0xFFFE), st.integers(0, 0xFE))


@given(
    st.lists(st.tuples(names, legs, legs), min_size=1, max_size=4, unique_by=lambda t: t[0]),
    st.integers(0, 3600),
)
def test_kernel_args_round_trip_property(volumes, wait):
    plans = [
        MirrorPlan.for_volume(name, [AoeLeg(*a), AoeLeg(*b)]) for name, a, b in volumes if a != b
    ]
    if not plans:
        return
    parsed = parse_kernel_args(render_kernel_args(plans, aoe_wait=wait, root=plans[0].name))
    assert parsed.arrays == tuple(plan.boot_spec() for plan in plans)
    assert parsed.aoe_wait == wait
    assert parsed.root == plans[0].md_device


# The initramfs script, run for real --------------------------------------------------------------

SHELLS = [
    pytest.param(["/usr/bin/busybox", "sh"], id="busybox"),
    pytest.param(["dash"], id="dash"),
]
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CC_LOG"
[ "$(basename "$0")" = mdadm ] && [ -n "$CC_MDADM_FAIL" ] && exit 2
exit 0
"""


@pytest.fixture
def fake_boot(tmp_path, shell):
    """A fake /dev/etherd, /sys and PATH with stub mdadm/modprobe/ip that log their argv.

    busybox sh runs its own modprobe and ip applets before anything on PATH, so for it every
    module is "loaded" already and the one interface is a name no host has: it touches nothing.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("mdadm", "modprobe", "ip"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    etherd = tmp_path / "etherd"
    etherd.mkdir()
    (tmp_path / "sys" / "class" / "net" / "cctest0").mkdir(parents=True)
    (tmp_path / "sys" / "class" / "net" / "lo").mkdir(parents=True)
    loaded = ["aoe"] if shell[0] == "dash" else ["aoe", "md_mod", "raid1"]
    for module in loaded:
        (tmp_path / "sys" / "module" / module).mkdir(parents=True)
    (tmp_path / "script.sh").write_text(render_initramfs_script())
    return tmp_path


def boot(shell: list[str], root: Path, cmdline: str, **env: str) -> tuple[int, str, list[str]]:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} not installed")
    (root / "cmdline").write_text(cmdline + "\n")
    log = root / "calls.log"
    log.write_text("")
    result = subprocess.run(
        [*shell, "-c", f". {root}/script.sh; cloudctl_md_assemble"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": f"{root / 'bin'}:{os.environ['PATH']}",
            "CLOUDCTL_CMDLINE": str(root / "cmdline"),
            "CLOUDCTL_ETHERD": str(root / "etherd"),
            "CLOUDCTL_SYS": str(root / "sys"),
            "CC_LOG": str(log),
            **env,
        },
    )
    return result.returncode, result.stdout + result.stderr, log.read_text().splitlines()


@pytest.mark.parametrize("shell", SHELLS)
def test_script_assembles_what_the_kernel_arguments_say(shell, fake_boot):
    for target in ("e1.1", "e2.1", "e1.2", "e2.2"):
        (fake_boot / "etherd" / target).touch()
    cmdline = "console=ttyS0 " + render_kernel_args([VOL1, VOL2], aoe_wait=30, root="vol1")
    started = time.monotonic()
    status, output, calls = boot(shell, fake_boot, cmdline)
    assert status == 0, output
    assert time.monotonic() - started < 5  # nothing missing: no waiting
    etherd = str(fake_boot / "etherd")
    # The shell's mdadm calls are exactly what the Python side renders for the parsed arguments.
    expected = []
    for spec in parse_kernel_args(cmdline).arrays:
        argv = assemble_command(spec, [f"{etherd}/{t}" for t in spec.targets])
        argv[3] = "--uuid=" + spec.uuid.replace(":", "")  # the shell passes the kernel's form
        expected.append(" ".join(argv))
    assert [c for c in calls if c.startswith("mdadm")] == expected
    if shell[0] == "dash":  # busybox uses its applets, not the stubs
        assert "modprobe md_mod" in calls and "modprobe raid1" in calls
        assert "modprobe aoe" not in calls  # /sys/module/aoe exists
        assert "ip link set cctest0 up" in calls and "ip link set lo up" not in calls
    assert not (fake_boot / "etherd" / "discover").exists()  # all there: no need to ask
    assert "cloudctl-md: vol1: assembled from" in output
    assert "DEGRADED" not in output


@pytest.mark.parametrize("shell", SHELLS)
def test_script_assembles_degraded_after_the_wait_and_says_so(shell, fake_boot):
    (fake_boot / "etherd" / "e1.1").touch()
    cmdline = render_kernel_args([VOL1], aoe_wait=1)
    started = time.monotonic()
    status, output, calls = boot(shell, fake_boot, cmdline)
    took = time.monotonic() - started
    assert status == 0, output
    assert 1 <= took < 5
    assert "cloudctl-md: vol1: DEGRADED: leg e2.1 missing after 1s" in output
    assert (fake_boot / "etherd" / "discover").read_text() == "discover\n"
    (assemble,) = [c for c in calls if c.startswith("mdadm")]
    assert assemble.endswith("--run " + str(fake_boot / "etherd" / "e1.1"))
    # The same message as on the real degraded boot (fixtures/boot-degraded.console).
    assert "cloudctl-md: vol1: DEGRADED: leg e2.1 missing after 4s" in fixture(
        "boot-degraded.console"
    )


@pytest.mark.parametrize("shell", SHELLS)
def test_script_fails_without_any_leg_or_when_mdadm_fails(shell, fake_boot):
    status, output, calls = boot(shell, fake_boot, render_kernel_args([VOL1], aoe_wait=0))
    assert status == 1
    assert "vol1: FAILED: no leg of e1.1 e2.1 appeared in 0s" in output
    assert not [c for c in calls if c.startswith("mdadm")]
    for target in ("e1.1", "e2.1"):
        (fake_boot / "etherd" / target).touch()
    status, output, _ = boot(shell, fake_boot, render_kernel_args([VOL1]), CC_MDADM_FAIL="1")
    assert status == 1
    assert "vol1: FAILED: mdadm --assemble exited 2" in output


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("arg", "why"),
    [
        ("cloudctl.md=vol1:e1.1", "too few fields"),
        (f"cloudctl.md=vol1:{'a' * 32}:e1.1:x", "too many fields"),
        (f"cloudctl.md=-v:{'a' * 32}:e1.1", "bad name"),
        (f"cloudctl.md=vol1:{'g' * 32}:e1.1", "bad uuid"),
        (f"cloudctl.md=vol1:{'a' * 30}:e1.1", "uuid needs 32 hex digits"),
        (f"cloudctl.md=vol1:{'a' * 32}:e1.1,f2", "bad target f2"),
        (f"cloudctl.md=vol1:{'a' * 32}:e1.1.1", "bad target e1.1.1"),
    ],
)
def test_script_rejects_bad_arguments_before_waiting(shell, fake_boot, arg, why):
    started = time.monotonic()
    status, output, calls = boot(shell, fake_boot, f"{arg} cloudctl.aoe_wait=30")
    assert status == 1
    assert why in output
    assert time.monotonic() - started < 5
    assert calls == []
    with pytest.raises(MirrorError):
        parse_kernel_args(arg)  # the Python parser refuses the same arguments


@pytest.mark.parametrize("shell", SHELLS)
def test_script_without_mirror_arguments_does_nothing(shell, fake_boot):
    assert boot(shell, fake_boot, "console=ttyS0 quiet") == (0, "", [])
    (fake_boot / "etherd" / "e1.1").touch()  # present: the fallback wait is not used up
    _, output, _ = boot(shell, fake_boot, "cloudctl.md=x:" + "a" * 32 + ":e1.1 cloudctl.aoe_wait=x")
    assert "cloudctl.aoe_wait=x is not whole seconds; using 30" in output


def test_script_default_wait_is_rendered():
    assert "_cc_wait=7\n" in render_initramfs_script(default_wait=7)
    with pytest.raises(MirrorError):
        render_initramfs_script(default_wait=-1)


def test_real_boots_printed_what_the_script_promises():
    both = fixture("boot-both.console")
    assert "cloudctl-md: vol1: assembled from /dev/etherd/e1.1 /dev/etherd/e2.1" in both
    assert "CLOUDCTL-MD-END rc=0" in both
    first = fixture("boot-first-noarrays.console")
    assert "cloudctl-md: vol1: FAILED: mdadm --assemble exited 2" in first


# /proc/mdstat and mdadm --detail ---------------------------------------------------------------


def test_mdstat_clean():
    stat = parse_mdstat(fixture("mdstat-clean.txt"))
    assert stat.personalities == ("raid1",)
    assert [a.device for a in stat.arrays] == ["md126", "md127"]
    vol1 = stat.array("/dev/md127")
    assert (vol1.level, vol1.slots, vol1.degraded, vol1.raid_disks) == ("raid1", "UU", False, 2)
    assert (vol1.size_kib, vol1.metadata, vol1.bitmap, vol1.sync) == (49088, "1.0", True, None)
    assert [(m.device, m.number, m.states) for m in vol1.members] == [
        ("etherd/e1.1", 0, ("active",)),
        ("etherd/e2.1", 1, ("active",)),
    ]
    with pytest.raises(MirrorError):
        stat.array("md0")


def test_mdstat_resync_recovery_and_check_progress():
    resync = parse_mdstat(fixture("mdstat-resync.txt")).array("md127").sync
    assert resync is not None and resync.action == "resync" and not resync.queued
    assert resync.total_kib == 49088 and 0 < resync.done_kib < 49088
    assert resync.percent == pytest.approx(
        100 * resync.done_kib / 49088, abs=1
    )  # md counts in-flight IO
    assert resync.finish_s is not None and resync.speed_kib_s > 0
    recovery = parse_mdstat(fixture("mdstat-recovery.txt")).array("md127")
    assert recovery.sync.action == "recovery" and recovery.slots == "U_" and recovery.degraded
    check = parse_mdstat(fixture("mdstat-check.txt")).array("md127")
    assert check.sync.action == "check" and not check.degraded


def test_mdstat_failed_removed_and_added_legs():
    failed = parse_mdstat(fixture("mdstat-failed.txt")).array("md127")
    assert failed.slots == "U_" and failed.member("/dev/etherd/e2.1").faulty
    removed = parse_mdstat(fixture("mdstat-removed.txt")).array("md127")
    assert [m.device for m in removed.members] == ["etherd/e1.1"] and removed.degraded
    # After --add the leg gets a new descriptor number (2), though it fills role 1.
    added = parse_mdstat(fixture("mdstat-add-recovery.txt")).array("md126")
    assert [(m.device, m.number) for m in added.members] == [("etherd/e1.2", 0), ("etherd/e2.2", 2)]
    assert added.sync.action == "recovery" and not added.bitmap
    boot_degraded = parse_mdstat(fixture("mdstat-degraded-boot.txt"))
    assert all(a.degraded for a in boot_degraded.arrays)


def test_mdstat_forms_not_captured_here():
    # Shapes from the md driver's seq_show that the captures did not produce: an inactive array,
    # read-only, a spare, a queued resync, and a level with a chunk size.
    text = """Personalities : [raid1] [raid0]
md2 : inactive sdc[1](S)
      1048576 blocks super 1.2

md1 : active (auto-read-only) raid1 sdb[2](S) sda[0] sdd[1](W)
      1048576 blocks super 1.0 [2/2] [UU]
      \tresync=DELAYED

md0 : active raid0 sde[0] sdf[1]
      2095104 blocks super 1.2 512k chunks

unused devices: <none>
"""
    stat = parse_mdstat(text)
    inactive, ro, raid0 = stat.arrays
    assert (inactive.active, inactive.level, inactive.members[0].states) == (
        False,
        None,
        ("spare",),
    )
    assert ro.read_only and ro.member("sdb").states == ("spare",)
    assert ro.member("sdd").states == ("active", "writemostly")
    assert ro.sync.queued and ro.sync.action == "resync"
    assert raid0.level == "raid0" and raid0.slots == "" and not raid0.degraded
    with pytest.raises(MirrorError, match="member"):
        parse_mdstat("md9 : active raid1 sda\n")


def test_detail_states():
    clean = parse_mdadm_detail(fixture("detail-clean.txt"))
    assert (clean.device, clean.name, clean.level, clean.metadata) == (
        "md/vol1",
        "vol1",
        "raid1",
        "1.0",
    )
    assert (clean.slots, clean.degraded, clean.bitmap, clean.size_kib) == ("UU", False, True, 49088)
    assert [(m.device, m.role, m.states) for m in clean.members] == [
        ("etherd/e1.1", 0, ("active", "sync")),
        ("etherd/e2.1", 1, ("active", "sync")),
    ]
    failed = parse_mdadm_detail(fixture("detail-failed.txt"))
    assert failed.slots == "U_"
    assert [(m.device, m.number, m.role, m.states) for m in failed.members[1:]] == [
        (None, None, 1, ("removed",)),
        ("etherd/e2.1", 1, None, ("faulty",)),
    ]
    recovering = parse_mdadm_detail(fixture("detail-add-recovery.txt"))
    assert recovering.member("etherd/e2.2").states == ("spare", "rebuilding")
    assert recovering.member("etherd/e2.2").role == 1 and not recovering.bitmap
    assert recovering.sync.action == "recovery" and recovering.sync.done_kib is None
    with pytest.raises(MirrorError):
        parse_mdadm_detail("mdadm: cannot open /dev/md9: No such file or directory\n")


@pytest.mark.parametrize(
    ("mdstat", "detail", "device"),
    [
        ("mdstat-clean.txt", "detail-clean.txt", "md127"),
        ("mdstat-resync.txt", "detail-resync.txt", "md127"),
        ("mdstat-failed.txt", "detail-failed.txt", "md127"),
        ("mdstat-removed.txt", "detail-removed.txt", "md127"),
        ("mdstat-recovery.txt", "detail-recovery.txt", "md127"),
        ("mdstat-check.txt", "detail-check.txt", "md127"),
        ("mdstat-degraded-boot.txt", "detail-degraded-boot.txt", "md127"),
        ("mdstat-add-recovery.txt", "detail-add-recovery.txt", "md126"),
    ],
)
def test_mdstat_and_detail_agree(mdstat, detail, device):
    """The two sources, read a moment apart in the same state, give the same health."""
    from_stat = parse_mdstat(fixture(mdstat)).array(device)
    from_detail = parse_mdadm_detail(fixture(detail))
    assert from_stat.slots == from_detail.slots
    assert from_stat.degraded == from_detail.degraded
    assert from_stat.level == from_detail.level and from_stat.size_kib == from_detail.size_kib
    assert from_stat.bitmap == from_detail.bitmap
    assert (from_stat.sync is None) == (from_detail.sync is None)
    if from_stat.sync is not None:
        assert from_stat.sync.action == from_detail.sync.action
        assert abs(from_stat.sync.percent - from_detail.sync.percent) < 5
    faulty = {m.device for m in from_stat.members if m.faulty}
    assert faulty == {m.device for m in from_detail.members if m.faulty}
