"""`cloudctl storage status` as text: md and DRBD state per volume, stray DRBD devices below.

The DRBD devices are what a storage node's agent reports of the real captures in
tests/unit/aoe/fixtures, read by its DrbdReader.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cloudctl.aoe.drbdreport import state_from_texts, status_to_json
from cloudctl.cli.storage import _status

FIXTURES = Path(__file__).parents[1] / "aoe" / "fixtures"
AT = 1_700_000_000.0


def reported(fixture: str, names: dict[int, tuple[str, int]]) -> list[dict]:
    """The "drbd" list an agent sends for this /proc/drbd (8.4: no drbdadm run)."""

    def no_drbdadm() -> str:
        raise AssertionError("drbdadm status must not run for 8.4")

    text = (FIXTURES / fixture).read_text()
    return [status_to_json(d) for d in state_from_texts(text, no_drbdadm, names)]


def volume(name: str, *snodes: str, state: str = "active") -> dict:
    legs = [{"snode": sn, "device": f"e{i + 1}.0", "state": state} for i, sn in enumerate(snodes)]
    return {"name": name, "size": 1 << 30, "legs": legs}


class Client:
    def __init__(self, status: dict) -> None:
        self.status = status

    def request(self, method: str, path: str) -> dict:
        assert (method, path) == ("GET", "/v1/storage")
        return self.status


def status_text(status: dict, capsys) -> str:
    assert _status(argparse.Namespace(output="text"), Client(status)) == 0
    return capsys.readouterr().out


def base_status(**drbd) -> dict:
    return {
        "in_maintenance": [],
        "agents": {},
        "volumes": [volume("vol1", "sn1", "sn2"), volume("vol2", "sn2", "sn3")],
        "mirrors": {},
        "drbd": {sn: {"reported_at": AT, "resources": res} for sn, res in drbd.items()},
    }


def test_resync_shows_both_sides_with_a_progress_bar(capsys):
    status = base_status(
        sn1=reported("drbd-proc-syncsource.txt", {0: ("vol1", 0)}),
        sn2=reported("drbd-proc-synctarget.txt", {0: ("vol1", 0)}),
    )
    lines = status_text(status, capsys).splitlines()
    assert lines[0].split() == ["VOLUME", "SIZE", "MIRROR", "LEGS", "ON", "NODES"]
    vol1 = next(line for line in lines if line.startswith("vol1 "))
    bar = "[" + "#" * 5 + "." * 15 + "]"
    assert vol1.endswith(
        f"sn1: Primary/UpToDate -> sn2 Secondary/Inconsistent SyncSource {bar} 25%; "
        f"sn2: Secondary/Inconsistent -> sn1 Primary/UpToDate SyncTarget {bar} 25%"
    )
    assert "drbd sn1: 1 device, reported " in lines[-2]
    assert lines[-1].startswith("drbd sn2: 1 device, reported ")


def test_in_sync_waiting_and_unmatched_devices(capsys):
    sn2 = reported("drbd-proc-dual-primary.txt", {0: ("vol2", 0)})
    sn3 = reported("drbd-proc-wfconnection.txt", {0: ("old", 0)})
    sn1 = reported("drbd-proc-connected-inconsistent.txt", {})  # no by-res link: no name
    status = base_status(sn1=sn1, sn2=sn2, sn3=sn3)
    status["mirrors"] = {
        "hn1": {
            "reported_at": AT,
            "arrays": [{"volume": "vol2", "array": "md127", "sync": None, "clean": True}],
        }
    }
    text = status_text(status, capsys)
    vol2 = next(line for line in text.splitlines() if line.startswith("vol2 "))
    assert vol2.endswith("hn1: clean; sn2: Primary/UpToDate -> sn3 Primary/UpToDate in sync")
    assert (
        "drbd minor 0 on sn1 (unnamed): Secondary/Inconsistent -> peer "
        "Secondary/Inconsistent Established, 32.0 MiB out of sync\n"
        "drbd old on sn3 (no such volume): Primary/UpToDate -> peer Connecting, "
        "2.0 MiB out of sync\n"
    ) in text
    vol1 = next(line for line in text.splitlines() if line.startswith("vol1 "))
    assert vol1.rstrip().endswith("e2.0@sn2:active")  # nothing reported for vol1


def test_status_from_a_cloudctld_without_drbd_reports(capsys):
    status = base_status()
    del status["drbd"]
    text = status_text(status, capsys)
    assert "drbd" not in text and "vol1" in text


def test_drbd_9_volumes_and_peer_names(capsys):
    from tests.unit.aoe.test_drbd import DRBD9_TWO_VOLUMES  # DRBD 9 layout, written by hand

    proc = "version: 9.2.4 (api:2/proto:86-122)\n"
    devices = state_from_texts(proc, lambda: DRBD9_TWO_VOLUMES, {})
    status = base_status(sn1=[status_to_json(d) for d in devices])
    status["volumes"].append(volume("web", "sn1", "sn2"))
    text = status_text(status, capsys)
    web = next(line for line in text.splitlines() if line.startswith("web "))
    assert web.endswith(  # DRBD 9 names its peer: that name is shown, not the other leg's
        "sn1: Secondary/UpToDate -> store-b Primary/UpToDate in sync; "
        "sn1 (DRBD volume 1): Secondary/Inconsistent -> store-b Primary/UpToDate SyncTarget "
        "[############........] 62%"
    )
    assert "drbd db on sn1 (no such volume): Primary/UpToDate -> store-b StandAlone\n" in text
