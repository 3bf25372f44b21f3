"""The mirror agent's decisions from real /proc/mdstat captures (tests/unit/aoe/fixtures)."""

from __future__ import annotations

from pathlib import Path

from cloudctl.aoe.mirror import parse_mdstat
from cloudctl.aoe.mirroragent import Command, LegView, MirrorAgent, VolumeView, decide

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = {"vol1": "md127", "vol2": "md126"}


def mdstat(name: str):
    return parse_mdstat((FIXTURES / f"mdstat-{name}.txt").read_text())


def volume(state1: str = "active", state2: str = "active", name: str = "vol1") -> VolumeView:
    slot = "1" if name == "vol1" else "2"
    return VolumeView(
        name, (LegView(f"e1.{slot}", "sn1", state1), LegView(f"e2.{slot}", "sn2", state2))
    )


def argvs(commands: list[Command]) -> list[tuple[str, ...]]:
    return [c.argv for c in commands]


def test_clean_array_reports_clean_and_does_nothing():
    (report,), commands = decide(mdstat("clean"), NAMES, [volume()], lambda path: True)
    assert report.clean and report.array == "md127"
    assert report.members == {"e1.1": "present", "e2.1": "present"}
    assert commands == []


def test_leg_failed_for_maintenance_is_failed_then_removed_while_still_exported():
    (report,), commands = decide(mdstat("clean"), NAMES, [volume(state2="failed")], lambda p: True)
    assert argvs(commands) == [
        ("mdadm", "/dev/md/vol1", "--fail", "/dev/etherd/e2.1"),
        ("mdadm", "/dev/md/vol1", "--remove", "/dev/etherd/e2.1"),
    ]
    assert report.members["e2.1"] == "present"  # until the commands ran
    _, commands = decide(mdstat("removed"), NAMES, [volume(state2="failed")], lambda p: True)
    assert commands == []  # gone from the array: nothing left to do


def test_md_failed_leg_is_removed_and_readded_once_its_export_is_back():
    (report,), commands = decide(mdstat("failed"), NAMES, [volume()], lambda p: True)
    assert report.members["e2.1"] == "faulty" and report.degraded and not report.clean
    assert argvs(commands) == [("mdadm", "/dev/md/vol1", "--remove", "/dev/etherd/e2.1")]
    _, commands = decide(mdstat("removed"), NAMES, [volume(state2="resyncing")], lambda p: False)
    assert commands == []  # the device node is not there yet: the export is not back
    _, (readd,) = decide(mdstat("removed"), NAMES, [volume(state2="resyncing")], lambda p: True)
    assert readd.argv == ("mdadm", "/dev/md/vol1", "--re-add", "/dev/etherd/e2.1")
    assert readd.fallback == ("mdadm", "/dev/md/vol1", "--add", "/dev/etherd/e2.1")


def test_a_leg_its_storage_node_does_not_export_yet_is_not_readded():
    _, commands = decide(mdstat("removed"), NAMES, [volume(state2="unexported")], lambda p: True)
    assert commands == []


def test_recovery_is_reported_with_its_progress_and_is_not_clean():
    (report,), commands = decide(mdstat("recovery"), NAMES, [volume(state2="resyncing")], bool)
    assert report.sync == {"action": "recovery", "percent": 4.1, "finish_s": 42}
    assert not report.clean and commands == []


def test_unassembled_and_unmirrored_volumes():
    single = VolumeView("solo", (LegView("e1.9", "sn1", "active"),))
    reports, commands = decide(mdstat("clean"), {}, [volume(), single], lambda p: True)
    assert [(r.volume, r.array) for r in reports] == [("vol1", None)]
    assert commands == []


class FakeMd:
    """A stand-in for one node's md: mdadm commands change which capture /proc/mdstat shows."""

    def __init__(self) -> None:
        self.state = "clean"
        self.ran: list[tuple[str, ...]] = []
        self.exported = True

    def mdstat(self) -> str:
        return (FIXTURES / f"mdstat-{self.state}.txt").read_text()

    def md_names(self):
        return NAMES

    def device_present(self, path: str) -> bool:
        return self.exported

    def discover(self) -> None:
        self.ran.append(("discover",))

    def run(self, argv):
        self.ran.append(tuple(argv))
        verb = argv[2]
        if verb == "--fail":
            self.state = "failed"
        elif verb == "--remove":
            self.state = "removed"
        elif verb == "--re-add":
            self.state = "recovery"
        return 0, ""


def test_agent_round_trip_acts_then_reports_what_it_did():
    md = FakeMd()
    sent = []
    answers = [
        [
            {
                "name": "vol1",
                "legs": [
                    {"device": "e1.1", "snode": "sn1", "state": "active"},
                    {"device": "e2.1", "snode": "sn2", "state": "failed"},
                ],
            }
        ]
    ]

    def exchange(reports):
        sent.append(reports)
        return answers[-1]

    agent = MirrorAgent(exchange, md)
    agent.once()  # learns its volumes
    agent.once()  # fails and removes e2.1, then reports it gone
    assert md.ran[-2:] == [
        ("mdadm", "/dev/md/vol1", "--fail", "/dev/etherd/e2.1"),
        ("mdadm", "/dev/md/vol1", "--remove", "/dev/etherd/e2.1"),
    ]
    assert sent[-1][0]["members"]["e2.1"] == "missing"
    answers.append(
        [
            {
                "name": "vol1",
                "legs": [
                    {"device": "e1.1", "snode": "sn1", "state": "active"},
                    {"device": "e2.1", "snode": "sn2", "state": "resyncing"},
                ],
            }
        ]
    )
    agent.once()  # learns the leg is back
    agent.once()  # re-adds it
    assert md.ran[-2:] == [("discover",), ("mdadm", "/dev/md/vol1", "--re-add", "/dev/etherd/e2.1")]
    assert sent[-1][0]["sync"]["action"] == "recovery"
    md.state = "removed"  # the re-add did not stick: no second try within the backoff
    agent.once()
    assert md.ran[-1] == ("mdadm", "/dev/md/vol1", "--re-add", "/dev/etherd/e2.1")
    assert len([r for r in md.ran if "--re-add" in r]) == 1
