"""cloudctl.aoe.drbdreport: which source the reader takes, the names it gives 8.4's minors, and
the JSON form the API checks. Status texts are the real captures in fixtures/ (see README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudctl.aoe import drbdreport
from cloudctl.aoe.drbd import parse_drbdadm_status, parse_proc_drbd
from cloudctl.aoe.drbdreport import (
    DrbdReader,
    names_by_res,
    run_drbdadm_status,
    state_from_texts,
    status_from_json,
    status_to_json,
    statuses_from_json,
)
from cloudctl.aoe.mirror import MirrorError

FIXTURES = Path(__file__).parent / "fixtures"
# DRBD 9's /proc/drbd: its version and no devices (they are in `drbdadm status`). Written after
# DRBD 9's format by hand: there is no DRBD 9 kernel here to capture it from.
DRBD9_PROC = """\
version: 9.2.4 (api:2/proto:86-122)
Transports (api:18): tcp (9.2.4)
"""


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


class StatusRunner:
    """A stand-in for `drbdadm status`: gives `text`, or fails the test if none is expected."""

    def __init__(self, text: str | None = None) -> None:
        self.text = text
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        assert self.text is not None, "drbdadm status must not run here"
        return self.text


def by_res(tmp_path: Path, links: dict[str, int]) -> Path:
    """A /dev/drbd/by-res as udev makes it: by-res/RESOURCE/0 -> ../../../drbdMINOR."""
    directory = tmp_path / "by-res"
    for resource, minor in links.items():
        (directory / resource).mkdir(parents=True)
        (directory / resource / "0").symlink_to(f"../../../drbd{minor}")
    return directory


def reader(tmp_path: Path, proc: str | None, runner: StatusRunner, links=None) -> DrbdReader:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "proc-drbd"
    if proc is not None:
        path.write_text(proc)
    return DrbdReader(path, by_res(tmp_path, links or {}), runner)


def test_drbd_84_is_read_from_proc_drbd_and_named_from_by_res(tmp_path):
    runner = StatusRunner()
    read = reader(tmp_path, fixture("drbd-proc-syncsource.txt"), runner, {"vol1": 0})
    (device,) = read()
    assert runner.calls == 0
    assert status_to_json(device) == {
        "resource": "vol1",
        "minor": 0,
        "volume": 0,
        "connection": "Connected",
        "replication": "SyncSource",
        "role": "Primary",
        "peer_role": "Secondary",
        "disk": "UpToDate",
        "peer_disk": "Inconsistent",
        "cstate": "SyncSource",
        "protocol": "C",
        "peer": None,
        "sync": {
            "action": "sync",
            "percent": 25.0,
            "done_kib": 4120,
            "total_kib": 32728,
            "out_of_sync_kib": 28608,
            "finish_s": 6,
            "speed_kib_s": 4120,
        },
        "out_of_sync_kib": 28608,
        "in_sync": False,
    }


def test_drbd_84_minor_without_a_by_res_link_stays_unnamed(tmp_path):
    (device,) = reader(tmp_path, fixture("drbd-proc-wfconnection.txt"), StatusRunner())()
    assert (device.resource, device.minor, device.connection) == (None, 0, "Connecting")
    assert device.out_of_sync_kib == 2048


def test_drbd_84_with_nothing_configured_reports_no_devices(tmp_path):
    version_only = fixture("drbd-proc-dual-primary.txt").splitlines(keepends=True)[:2]
    runner = StatusRunner()
    assert reader(tmp_path, "".join(version_only), runner)() == ()
    assert runner.calls == 0  # 8.4 has no devices: no need to ask drbdadm


def test_drbd_9_falls_back_to_drbdadm_status(tmp_path):
    runner = StatusRunner(fixture("drbd-status-synctarget.txt"))  # drbdadm status's layout
    (device,) = reader(tmp_path, DRBD9_PROC, runner, {"other": 0})()
    assert runner.calls == 1
    assert (device.resource, device.minor, device.replication) == ("r0", None, "SyncTarget")
    assert (device.role, device.disk, device.sync.percent) == ("Secondary", "Inconsistent", 12.91)
    runner = StatusRunner(fixture("drbd-drbdadm-status-dual-primary.txt"))
    (device,) = reader(tmp_path / "dual", DRBD9_PROC, runner)()
    assert device.resource == "r0" and device.in_sync


def test_no_proc_drbd_means_no_drbd_and_no_drbdadm(tmp_path):
    runner = StatusRunner()
    assert reader(tmp_path, None, runner)() is None
    assert runner.calls == 0


def test_state_from_texts_is_the_same_decision_without_files():
    names = {0: ("r0", 0)}
    proc = fixture("drbd-proc-dual-primary.txt")
    (device,) = state_from_texts(proc, StatusRunner(), names)
    assert device.in_sync and device.resource == "r0"
    assert state_from_texts(None, StatusRunner(), names) is None


def test_names_by_res_reads_both_link_layouts(tmp_path):
    directory = by_res(tmp_path, {"web": 3})
    (directory / "db").symlink_to("../../drbd7")  # 8.4's drbdadm: by-res/NAME, no volume
    (directory / "stray").write_text("")
    assert names_by_res(directory) == {3: ("web", 0), 7: ("db", None)}
    assert names_by_res(tmp_path / "absent") == {}


def test_drbdadm_status_output_errors_and_timeout(monkeypatch):
    def command(script: str) -> None:
        monkeypatch.setattr(drbdreport, "DRBDADM_STATUS", ("sh", "-c", script))

    command("echo 'r1: No such resource' >&2; exit 10")
    with pytest.raises(MirrorError, match="r1: No such resource"):
        run_drbdadm_status()
    # A resource that is not up makes drbdadm fail, but the others still count.
    command("echo 'r0 role:Primary'; echo 'r1: No such resource' >&2; exit 10")
    assert run_drbdadm_status() == "r0 role:Primary\n"
    command("sleep 5")
    with pytest.raises(MirrorError, match="timed out"):
        run_drbdadm_status(timeout=0.2)
    monkeypatch.setattr(drbdreport, "DRBDADM_STATUS", ("/nonexistent/drbdadm", "status"))
    with pytest.raises(MirrorError, match="No such file"):
        run_drbdadm_status()


def test_unreadable_proc_drbd_is_an_error(tmp_path):
    proc = tmp_path / "proc-drbd"
    proc.mkdir()  # reading a directory fails like an unreadable file
    with pytest.raises(MirrorError, match="proc-drbd"):
        DrbdReader(proc, tmp_path / "by-res", StatusRunner())()


ALL_TEXTS = sorted(p.name for p in FIXTURES.glob("drbd-*.txt"))


@pytest.mark.parametrize("name", ALL_TEXTS)
def test_json_round_trip_of_every_fixture(name):
    text = fixture(name)
    devices = parse_proc_drbd(text).devices if "proc" in name else parse_drbdadm_status(text)
    sent = json.loads(json.dumps([status_to_json(d) for d in devices]))
    assert statuses_from_json(sent) == devices


GOOD = status_to_json(parse_proc_drbd(fixture("drbd-proc-syncsource.txt")).minor(0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": None}, r"drbd\[0\]\.role must be a word"),
        ({"disk": "Up To Date"}, r"drbd\[0\]\.disk must be a word"),
        ({"minor": -1}, r"drbd\[0\]\.minor must be a whole number"),
        ({"minor": True}, r"drbd\[0\]\.minor must be a whole number"),
        ({"out_of_sync_kib": "2048"}, r"drbd\[0\]\.out_of_sync_kib must be a whole number"),
        ({"sync": {"action": "sync", "percent": 150}}, r"drbd\[0\]\.sync\.percent must be"),
        ({"sync": {"percent": 5}}, r"drbd\[0\]\.sync\.action must be a word"),
        ({"sync": "25%"}, r"drbd\[0\]\.sync must be an object or null"),
        ({"resource": "a\nb"}, r"drbd\[0\]\.resource must be a word"),
    ],
)
def test_bad_shapes_name_the_field(change, message):
    with pytest.raises(MirrorError, match=message):
        statuses_from_json([{**GOOD, **change}])


def test_bad_containers_and_missing_fields():
    with pytest.raises(MirrorError, match="drbd must be a list"):
        statuses_from_json({"r0": GOOD})
    with pytest.raises(MirrorError, match=r"drbd\[1\] must be an object"):
        statuses_from_json([GOOD, "r0"])
    missing = {k: v for k, v in GOOD.items() if k != "peer_disk"}
    with pytest.raises(MirrorError, match=r"drbd\[0\]: missing peer_disk"):
        statuses_from_json([missing])
    # Derived and unknown fields are ignored: in_sync is recomputed, newer agents may add fields.
    assert status_from_json({**GOOD, "in_sync": True, "new": 1}).in_sync is False
