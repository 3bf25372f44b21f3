"""StorageAgent: files follow the inventory, exports follow the flags, outages change nothing."""

from __future__ import annotations

import asyncio

from cloudctl.aoe.agent import StorageAgent
from cloudctl.aoe.volumes import volume_path

MIB = 1 << 20


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
    def __init__(self, tmp_path):
        self.feed = {"exports": []}
        self.reachable = True
        self.applied = []
        self.reported = []
        self.agent = StorageAgent(tmp_path, self.fetch, self.reported.append, self.apply)
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
    assert rig.applied == [["e1.0", "e1.1"]] and rig.reported == [["e1.0", "e1.1"]]
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
