"""cloudctl.scheduler.evacuation: host evacuation and storage-node maintenance plans."""

from __future__ import annotations

import pytest

from cloudctl.scheduler import (
    Host,
    Instance,
    Move,
    Plan,
    SchedulerError,
    Snapshot,
    plan_evacuation,
    plan_storage_maintenance,
)


def test_evacuation_moves_every_instance_off_the_host():
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8, drained=True), Host("hn2", 8192, 8), Host("hn3", 4096, 8)),
        instances=(
            Instance("a", 1024, 1, "hn1"),
            Instance("b", 2048, 1, "hn1"),
            Instance("c", 512, 1, "hn2"),
        ),
    )
    plan = plan_evacuation(snapshot, "hn1")
    assert plan == Plan(moves=(Move("b", "hn1", "hn2"), Move("a", "hn1", "hn2")))
    assert plan.complete


def test_evacuation_places_big_instances_first():
    # Smallest first, spread would put "small" on hn2 (most free) and leave "big" nowhere.
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8), Host("hn2", 4096, 8), Host("hn3", 2048, 8)),
        instances=(Instance("small", 2048, 1, "hn1"), Instance("big", 4096, 1, "hn1")),
    )
    plan = plan_evacuation(snapshot, "hn1")
    assert plan.moves == (Move("big", "hn1", "hn2"), Move("small", "hn1", "hn3"))


def test_evacuation_respects_anti_affinity_between_its_own_moves():
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8), Host("hn2", 8192, 8), Host("hn3", 8192, 8)),
        instances=(
            Instance("web-1", 1024, 1, "hn1", group="web"),
            Instance("web-2", 1024, 1, "hn1", group="web"),
            Instance("web-3", 1024, 1, "hn1", group="web"),
        ),
    )
    plan = plan_evacuation(snapshot, "hn1")
    assert plan.moves == (Move("web-1", "hn1", "hn2"), Move("web-2", "hn1", "hn3"))
    assert plan.stuck == (
        (
            "web-3",
            "no host fits: hn1 is the host it moves off; hn2, hn3 already running group web",
        ),
    )


def test_evacuation_respects_capacity_taken_by_earlier_moves():
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8), Host("hn2", 3072, 8)),
        instances=(Instance("a", 2048, 1, "hn1"), Instance("b", 2048, 1, "hn1")),
    )
    plan = plan_evacuation(snapshot, "hn1", "pack")
    assert plan.moves == (Move("a", "hn1", "hn2"),)
    assert plan.stuck == (
        (
            "b",
            "no host fits: hn1 is the host it moves off; "
            "hn2 short of memory (needs 2048 MiB, at most 1024 free)",
        ),
    )


def test_evacuation_only_targets_hosts_that_reach_the_storage():
    snapshot = Snapshot(
        hosts=(
            Host("hn1", 8192, 8, storage={"sn1", "sn2"}),
            Host("hn2", 8192, 8, storage={"sn3"}),
            Host("hn3", 1024, 1, storage={"sn2"}),
            Host("hn4", 8192, 8, storage={"sn1"}, reachable=False),
        ),
        instances=(Instance("db", 1024, 1, "hn1", storage={"sn1", "sn2"}, volumes=("db-vol",)),),
    )
    assert plan_evacuation(snapshot, "hn1").moves == (Move("db", "hn1", "hn3"),)


def test_evacuating_an_empty_host_is_an_empty_plan():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8),), instances=(Instance("x", 1, 1),))
    assert plan_evacuation(snapshot, "hn1") == Plan()


def test_evacuating_an_unknown_host_is_an_error():
    with pytest.raises(SchedulerError, match="unknown host 'hn9'"):
        plan_evacuation(Snapshot(hosts=(Host("hn1", 1, 1),)), "hn9")


def storage_cluster(*instances: Instance) -> Snapshot:
    return Snapshot(
        hosts=(
            Host("hn1", 8192, 8, storage={"sn1"}),
            Host("hn2", 8192, 8, storage={"sn1", "sn2"}),
            Host("hn3", 4096, 8, storage={"sn2"}),
            Host("hn4", 16384, 8, storage={"sn3"}),
        ),
        instances=instances,
    )


def test_storage_maintenance_moves_only_instances_that_would_lose_their_last_path():
    snapshot = storage_cluster(
        Instance("unsafe", 1024, 1, "hn1", storage={"sn1", "sn2"}),  # hn1 reaches only sn1
        Instance("safe", 1024, 1, "hn2", storage={"sn1", "sn2"}),  # hn2 also reaches sn2
        Instance("elsewhere", 1024, 1, "hn4", storage={"sn3"}),
        Instance("diskless", 1024, 1, "hn1"),
        Instance("stopped", 1024, 1, None, storage={"sn1", "sn2"}),
    )
    plan = plan_storage_maintenance(snapshot, "sn1")
    # hn2 has the most free memory among hosts that reach sn2 (hn4 does not).
    assert plan == Plan(moves=(Move("unsafe", "hn1", "hn2"),))


def test_storage_maintenance_targets_must_keep_a_path_without_the_node():
    # Without sn1 only hn2 and hn3 keep a path (to sn2), and hn3 is too full; without sn2,
    # hn1 keeps its path to sn1 and nothing moves.
    snapshot = storage_cluster(
        Instance("vm", 2048, 1, "hn1", storage={"sn1", "sn2"}),
        Instance("filler", 3072, 1, "hn3"),
    )
    plan = plan_storage_maintenance(snapshot, "sn2")
    assert plan == Plan()  # hn1 keeps its path to sn1: safe
    plan = plan_storage_maintenance(snapshot, "sn1")
    assert plan.moves == (Move("vm", "hn1", "hn2"),)


def test_storage_maintenance_stuck_when_no_host_keeps_a_path():
    snapshot = storage_cluster(
        Instance("vm", 8192, 1, "hn1", storage={"sn1", "sn2"}, volumes=("vol1",)),
        Instance("hog", 4096, 1, "hn2"),
    )
    plan = plan_storage_maintenance(snapshot, "sn1")
    assert plan.moves == ()
    assert plan.stuck == (
        (
            "vm",
            "no host fits: hn1, hn4 without a path to sn2; "
            "hn2, hn3 short of memory (needs 8192 MiB, at most 4096 free)",
        ),
    )


def test_storage_maintenance_cannot_save_an_instance_with_every_leg_on_the_node():
    snapshot = storage_cluster(Instance("vm", 1024, 1, "hn2", storage={"sn1"}, volumes=("v1",)))
    plan = plan_storage_maintenance(snapshot, "sn1")
    assert plan.stuck == (
        (
            "vm",
            "every healthy leg of v1 is on sn1: no host can keep a path; repair a mirror leg first",
        ),
    )


def test_storage_maintenance_does_not_reuse_capacity_its_moves_free():
    # a leaves hn1 for hn2 and b could then take a's place on hn1, but only once a has moved;
    # the plan must hold whatever order the moves run in, so b is stuck instead.
    snapshot = Snapshot(
        hosts=(
            Host("hn1", 2048, 8, storage={"sn1", "sn3"}),
            Host("hn2", 2048, 8, storage={"sn1", "sn2"}),
        ),
        instances=(
            Instance("a", 2048, 1, "hn1", storage={"sn1", "sn2"}),
            Instance("b", 2048, 1, "hn2", storage={"sn1", "sn3"}),
        ),
    )
    plan = plan_storage_maintenance(snapshot, "sn1")
    assert plan.moves == ()
    assert [name for name, _ in plan.stuck] == ["a", "b"]


def test_storage_maintenance_with_unknown_node_moves_nothing_and_bad_name_is_an_error():
    snapshot = storage_cluster(Instance("vm", 1024, 1, "hn1", storage={"sn1"}))
    assert plan_storage_maintenance(snapshot, "sn-typo") == Plan()
    with pytest.raises(SchedulerError, match="storage node must be a non-empty name"):
        plan_storage_maintenance(snapshot, "")
