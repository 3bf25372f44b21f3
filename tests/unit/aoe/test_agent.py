"""StorageAgent: files follow the inventory, exports follow the flags, outages change nothing;
DRBD state rides along in the report, and reading it can never stop the exports."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cloudctl.aoe.agent import StorageAgent
from cloudctl.aoe.drbdreport import DrbdReader
from cloudctl.aoe.mirror import MirrorError
from cloudctl.aoe.volumes import volume_path

MIB = 1 << 20
FIXTURES = Path(__file__).parent / "fixtures"


def leg(volume, slot, size=MIB, exported=True, origin=None, macs=()):
    return {
        "volume": volume,
        "shelf": 1,
        "slot": slot,
        "size": size,
        "origin": origin,
        "allowed_macs": list(macs),
        "exported": exported,
    }


class Rig:
    def __init__(self, tmp_path, read_drbd=None):
        self.feed = {"exports": []}
        self.reachable = True
        self.applied = []
        self.reported = []
        self.agent = StorageAgent(
            tmp_path, self.fetch, self.reported.append, self.apply, read_drbd=read_drbd
        )
        self.dir = tmp_path

    def fetch(self):
        if not self.reachable:
            raise ConnectionRefusedError("cloudctld is down")
        return self.feed

    async def apply(self, plans):
        self.applied.append([p.device for p in plans])

    def sync(self):
        return asyncio.run(self.agent.sync_once())


def test_files_exports_and_reports_follow_the_feed(tmp_path):
    rig = Rig(tmp_path)
    rig.feed = {"exports": [leg("root", 0, macs=["52:54:00:00:00:01"]), leg("data", 1, 2 * MIB)]}
    assert rig.sync()
    assert volume_path(tmp_path, "data").stat().st_size == 2 * MIB
    assert volume_path(tmp_path, "data").stat().st_blocks == 0  # sparse
    assert rig.applied == [["e1.0", "e1.1"]]
    assert rig.reported == [{"exports": ["e1.0", "e1.1"]}]  # no DRBD reader: what it always sent
    assert rig.agent.exported[0].allowed_macs == frozenset({"52:54:00:00:00:01"})

    volume_path(tmp_path, "data").write_bytes(b"D" * 4096)  # the volume holds data now
    rig.feed = {
        "exports": [
            leg("root", 0, exported=False),
            leg("data", 1, 4 * MIB),
            leg("data-snap", 2, 4 * MIB, origin="data"),
        ]
    }
    rig.sync()
    assert rig.applied[-1] == ["e1.1", "e1.2"]  # root withdrawn (maintenance), file kept
    assert volume_path(tmp_path, "root").exists()
    assert volume_path(tmp_path, "data").stat().st_size == 4 * MIB  # grown
    snap = volume_path(tmp_path, "data-snap").read_bytes()
    assert snap[:4096] == b"D" * 4096 and len(snap) == 4 * MIB


def test_api_outage_keeps_serving(tmp_path):
    rig = Rig(tmp_path)
    rig.feed = {"exports": [leg("root", 0)]}
    rig.sync()
    rig.reachable = False
    assert not rig.sync()
    assert rig.applied == [["e1.0"]]  # nothing withdrawn while cloudctld is away
    assert rig.agent.exported[0].device == "e1.0"


def test_only_volumes_seen_and_then_deleted_are_trashed(tmp_path):
    volume_path(tmp_path, "old").write_bytes(b"keep me")
    rig = Rig(tmp_path)
    rig.feed = {"exports": []}  # a first, empty feed must not touch existing files
    rig.sync()
    assert volume_path(tmp_path, "old").read_bytes() == b"keep me"
    rig.feed = {"exports": [leg("gone", 0)]}
    rig.sync()
    rig.feed = {"exports": []}
    rig.sync()
    assert not volume_path(tmp_path, "gone").exists()
    assert [p.name.split(".img")[0] for p in (tmp_path / ".trash").iterdir()] == ["gone"]
    assert volume_path(tmp_path, "old").exists()


class ProcDrbd:
    """This node's /proc/drbd for a DrbdReader: a real capture, absent, or unreadable."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "proc-drbd"
        self.by_res = tmp_path / "by-res"
        (self.by_res / "vol1").mkdir(parents=True)
        (self.by_res / "vol1" / "0").symlink_to("../../../drbd0")  # as udev links it

    def show(self, fixture):
        self.path.write_text((FIXTURES / fixture).read_text())

    def reader(self):
        def no_drbdadm():
            raise AssertionError("DRBD 8.4: drbdadm status must not run")

        return DrbdReader(self.path, self.by_res, no_drbdadm)


def test_report_carries_the_drbd_state_read_each_round(tmp_path):
    proc = ProcDrbd(tmp_path)
    rig = Rig(tmp_path / "legs", proc.reader())
    rig.feed = {"exports": [leg("vol1", 0)]}
    proc.show("drbd-proc-syncsource.txt")
    rig.sync()
    (body,) = rig.reported
    assert body["exports"] == ["e1.0"]
    (device,) = body["drbd"]
    assert (device["resource"], device["role"], device["peer_disk"]) == (
        "vol1",
        "Primary",
        "Inconsistent",
    )
    assert (device["replication"], device["sync"]["percent"]) == ("SyncSource", 25.0)
    proc.show("drbd-proc-dual-primary.txt")
    rig.sync()
    assert rig.reported[-1]["drbd"][0]["in_sync"] is True


def test_no_drbd_sends_no_drbd_field_and_drbd_going_away_sends_null_once(tmp_path):
    proc = ProcDrbd(tmp_path)
    rig = Rig(tmp_path / "legs", proc.reader())
    rig.sync()
    assert rig.reported == [{"exports": []}]  # no /proc/drbd: old cloudctlds accept this too
    proc.show("drbd-proc-wfconnection.txt")
    rig.sync()
    assert rig.reported[-1]["drbd"][0]["connection"] == "Connecting"
    proc.path.unlink()  # the module was unloaded
    rig.sync()
    rig.sync()
    assert rig.reported[-2:] == [{"exports": [], "drbd": None}, {"exports": []}]


def test_drbd_reading_failures_are_logged_once_and_never_stop_exports(tmp_path, caplog):
    failures = iter(["drbdadm status: timed out", "drbdadm status: timed out", "other"])

    def read_drbd():
        reason = next(failures, None)
        if reason is None:
            return ()
        raise MirrorError(reason)

    rig = Rig(tmp_path, read_drbd)
    rig.feed = {"exports": [leg("root", 0)]}
    with caplog.at_level(logging.INFO, logger="cloudctl.aoe.agent"):
        for _ in range(4):
            assert rig.sync()
    assert rig.applied == [["e1.0"]]
    # A failed reading reports the exports without "drbd": cloudctld keeps the last state.
    assert rig.reported == [{"exports": ["e1.0"]}] * 3 + [{"exports": ["e1.0"], "drbd": []}]
    messages = [r.getMessage() for r in caplog.records if "DRBD" in r.getMessage()]
    assert messages == [
        "cannot read DRBD state (exports go on): drbdadm status: timed out",
        "cannot read DRBD state (exports go on): other",
        "reading DRBD state again",
    ]
