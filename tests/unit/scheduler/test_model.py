"""cloudctl.scheduler.model: input validation and the capacity a snapshot derives."""

from __future__ import annotations

import pytest

from cloudctl.scheduler import (
    Host,
    Instance,
    Plan,
    Policy,
    Request,
    SchedulerError,
    Snapshot,
    place,
    plan_evacuation,
)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Host("hn1", -1, 4), "host hn1: memory_mib must be a non-negative integer"),
        (lambda: Host("hn1", 1024, -2), "host hn1: vcpus must be a non-negative integer"),
        (lambda: Host("hn1", 1024, True), "vcpus must be a non-negative integer"),
        (lambda: Host("hn1", 1024, 2, memory_reserved_mib=-1), "memory_reserved_mib"),
        (lambda: Host("", 1024, 2), "host name must be a non-empty string"),
        (lambda: Host("hn1", 1024, 2, storage="sn1"), "not a string"),
        (lambda: Instance("vm1", 512, -1, "hn1"), "instance vm1: vcpus must be a non-negative"),
        (lambda: Instance("vm1", 512.5, 1), "instance vm1: memory_mib must be a non-negative"),
        (lambda: Request("r1", -512, 1), "request r1: memory_mib must be a non-negative"),
        (lambda: Request("r1", 512, 1, storage="sn1"), "not a string"),
    ],
)
def test_bad_sizes_and_names_are_refused_with_what_was_wrong(build, message):
    with pytest.raises(SchedulerError, match=message):
        build()


def test_snapshot_refuses_duplicates_and_unknown_hosts():
    hn1 = Host("hn1", 1024, 2)
    with pytest.raises(SchedulerError, match="host hn1 appears twice"):
        Snapshot(hosts=(hn1, hn1))
    with pytest.raises(SchedulerError, match="instance vm1 appears twice"):
        Snapshot(hosts=(hn1,), instances=(Instance("vm1", 1, 1), Instance("vm1", 1, 1)))
    with pytest.raises(SchedulerError, match="instance vm1 runs on unknown host hn9"):
        Snapshot(hosts=(hn1,), instances=(Instance("vm1", 1, 1, "hn9"),))


@pytest.mark.parametrize("overcommit", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_snapshot_refuses_bad_overcommit(overcommit):
    with pytest.raises(SchedulerError, match="vcpu_overcommit must be a positive number"):
        Snapshot(hosts=(), vcpu_overcommit=overcommit)


def test_free_capacity_is_totals_minus_reserved_minus_running_instances():
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8, memory_reserved_mib=1024), Host("hn2", 4096, 4)),
        instances=(
            Instance("vm1", 2048, 2, "hn1"),
            Instance("vm2", 1024, 3, "hn1"),
            Instance("vm3", 4096, 4, None),  # not running: uses nothing
        ),
    )
    assert snapshot.free_memory_mib("hn1") == 8192 - 1024 - 3072
    assert snapshot.free_vcpus("hn1") == 3
    assert snapshot.free_memory_mib("hn2") == 4096
    assert [i.name for i in snapshot.instances_on("hn1")] == ["vm1", "vm2"]


def test_free_capacity_may_be_negative_when_already_overcommitted():
    snapshot = Snapshot(hosts=(Host("hn1", 1024, 1),), instances=(Instance("vm1", 2048, 2, "hn1"),))
    assert snapshot.free_memory_mib("hn1") == -1024
    assert snapshot.free_vcpus("hn1") == -1


def test_vcpu_overcommit_scales_vcpu_capacity_rounded_down():
    snapshot = Snapshot(hosts=(Host("hn1", 1024, 3), Host("hn2", 1024, 100)), vcpu_overcommit=1.5)
    assert snapshot.vcpu_capacity("hn1") == 4
    # 100 * 0.57 is 56.99999999999999 in floating point; it must still count as 57.
    assert Snapshot(hosts=(Host("hn2", 1, 100),), vcpu_overcommit=0.57).vcpu_capacity("hn2") == 57


def test_unknown_host_lookup_says_which():
    with pytest.raises(SchedulerError, match="unknown host 'hn7'"):
        Snapshot(hosts=(Host("hn1", 1, 1),)).free_memory_mib("hn7")


def test_storage_is_coerced_to_frozenset():
    assert Host("hn1", 1, 1, storage=["sn1", "sn2"]).storage == frozenset({"sn1", "sn2"})
    assert Request("r", 1, 1, storage={"sn1"}, volumes=["v"]).volumes == ("v",)


def test_policy_parse_accepts_names_and_refuses_others():
    assert Policy.parse("pack") is Policy.PACK
    assert Policy.parse(Policy.SPREAD) is Policy.SPREAD
    snapshot = Snapshot(hosts=(Host("hn1", 1024, 1),))
    with pytest.raises(SchedulerError, match=r"unknown placement policy 'balanced'.*spread, pack"):
        place(snapshot, Request("r", 1, 1), "balanced")
    with pytest.raises(SchedulerError, match="unknown placement policy"):
        plan_evacuation(snapshot, "hn1", "first-fit")


def test_request_for_instance_copies_what_placement_needs():
    instance = Instance("vm1", 512, 2, "hn1", group="web", storage={"sn1"}, volumes=("v1",))
    assert Request.for_instance(instance) == Request(
        "vm1", 512, 2, group="web", storage=frozenset({"sn1"}), volumes=("v1",)
    )


def test_plan_is_complete_without_stuck_instances():
    assert Plan().complete
    assert not Plan(stuck=(("vm1", "no host fits"),)).complete
