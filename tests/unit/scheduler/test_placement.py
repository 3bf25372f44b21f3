"""cloudctl.scheduler.placement: each rule, each reason, both policies, pinning, and the bulk
path agreeing with the explained one on seeded random clusters.
"""

from __future__ import annotations

import random

import pytest

from cloudctl.scheduler import (
    Host,
    Instance,
    Request,
    SchedulerError,
    Snapshot,
    Verdict,
    place,
    place_all,
)


def by_host(placement):
    return {c.host: c for c in placement.candidates}


def test_spread_chooses_most_free_memory_and_says_so():
    snapshot = Snapshot(hosts=(Host("hn1", 4096, 8), Host("hn2", 8192, 6), Host("hn3", 2048, 8)))
    placement = place(snapshot, Request("vm", 1024, 2))
    assert placement.host == "hn2"
    assert placement.reason == "chosen: most free memory (spread)"
    cands = by_host(placement)
    assert cands["hn2"].verdict is Verdict.CHOSEN and cands["hn2"].fits
    assert cands["hn1"].reason == "fits: 4096 MiB, 8 vCPUs free"
    assert cands["hn1"].verdict is Verdict.FITS and cands["hn1"].fits
    assert (cands["hn3"].free_memory_mib, cands["hn3"].free_vcpus) == (2048, 8)


def test_spread_breaks_memory_ties_by_vcpus_then_name():
    snapshot = Snapshot(hosts=(Host("hn2", 4096, 4), Host("hn1", 4096, 8), Host("hn0", 4096, 8)))
    placement = place(snapshot, Request("vm", 1024, 2))
    assert placement.host == "hn0"
    assert placement.reason == "chosen: most free memory and vCPUs tied, first by name (spread)"
    snapshot = Snapshot(hosts=(Host("hn2", 4096, 4), Host("hn1", 4096, 8)))
    placement = place(snapshot, Request("vm", 1024, 2))
    assert placement.host == "hn1"
    assert placement.reason == "chosen: most free memory, then most free vCPUs (spread)"


def test_pack_chooses_least_free_memory_that_still_fits():
    snapshot = Snapshot(
        hosts=(Host("hn1", 8192, 8), Host("hn2", 2048, 8), Host("hn3", 1024, 8)),
        instances=(Instance("vm0", 1024, 1, "hn1"),),
    )
    placement = place(snapshot, Request("vm", 2048, 2), "pack")
    assert placement.host == "hn2"
    assert placement.reason == "chosen: least free memory that fits (pack)"
    assert by_host(placement)["hn3"].reason == "needs 2048 MiB, 1024 free"


def test_pack_breaks_memory_ties_by_fewest_free_vcpus():
    snapshot = Snapshot(hosts=(Host("hn1", 2048, 8), Host("hn2", 2048, 4)))
    placement = place(snapshot, Request("vm", 2048, 2), "pack")
    assert placement.host == "hn2"
    assert placement.reason == "chosen: least free memory that fits, then fewest free vCPUs (pack)"


def test_single_fitting_host_is_chosen_as_the_only_one():
    snapshot = Snapshot(hosts=(Host("hn1", 1024, 1), Host("hn2", 8192, 8, drained=True)))
    assert place(snapshot, Request("vm", 512, 1)).reason == "chosen: only host that fits"


@pytest.mark.parametrize(
    ("host", "reason", "verdict"),
    [
        (Host("hn1", 8192, 8, drained=True), "drained", Verdict.DRAINED),
        (Host("hn1", 8192, 8, reachable=False), "unreachable", Verdict.UNREACHABLE),
        (Host("hn1", 8192, 8, maintenance=True), "in maintenance", Verdict.MAINTENANCE),
        (Host("hn1", 1024, 8), "needs 2048 MiB, 1024 free", Verdict.MEMORY),
        (Host("hn1", 8192, 2), "needs 4 vCPUs, 2 free", Verdict.VCPUS),
        (Host("hn1", 8192, 8, storage={"sn3"}), "cannot reach storage of vol1 (sn1, sn2)", None),
    ],
)
def test_each_exclusion_has_its_reason(host, reason, verdict):
    snapshot = Snapshot(hosts=(host,))
    request = Request("vm", 2048, 4, storage={"sn2", "sn1"}, volumes=("vol1",))
    if host.storage:
        verdict = Verdict.STORAGE
    else:
        request = Request("vm", 2048, 4)
    placement = place(snapshot, request)
    assert placement.host is None
    (candidate,) = placement.candidates
    assert (candidate.fits, candidate.reason, candidate.verdict) == (False, reason, verdict)


def test_one_vcpu_is_singular():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 0), Host("hn2", 8192, 1)))
    cands = by_host(place(snapshot, Request("vm", 1, 1), "pack"))
    assert cands["hn1"].reason == "needs 1 vCPU, 0 free"
    assert cands["hn2"].reason == "chosen: only host that fits"
    cands = by_host(place(snapshot, Request("vm", 1, 0), "pack"))
    assert cands["hn2"].reason == "fits: 8192 MiB, 1 vCPU free"
    cands = by_host(place(snapshot, Request("vm", 1, 0), "spread"))
    assert cands["hn1"].reason == "fits: 8192 MiB, 0 vCPUs free"


def test_anti_affinity_names_the_group_host_and_instance():
    snapshot = Snapshot(
        hosts=(Host("hn3", 16384, 16), Host("hn4", 2048, 2)),
        instances=(Instance("web-1", 1024, 1, "hn3", group="web"), Instance("db-1", 1, 1, "hn4")),
    )
    placement = place(snapshot, Request("web-2", 1024, 1, group="web"))
    assert placement.host == "hn4"
    assert by_host(placement)["hn3"].reason == "anti-affinity: group web already on hn3 (web-1)"
    assert by_host(placement)["hn3"].verdict is Verdict.ANTI_AFFINITY
    # Other groups and ungrouped instances do not repel each other.
    assert place(snapshot, Request("db-2", 1024, 1, group="db")).host == "hn3"
    assert place(snapshot, Request("x", 1024, 1)).host == "hn3"


def test_storage_reason_falls_back_to_instance_name_without_volume_names():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8, storage={"sn1"}),))
    placement = place(snapshot, Request("vm7", 1, 1, storage={"sn2"}))
    assert placement.candidates[0].reason == "cannot reach storage of vm7 (sn2)"


def test_storage_needs_one_shared_node_and_no_volume_fits_anywhere():
    snapshot = Snapshot(
        hosts=(
            Host("hn1", 8192, 8, storage={"sn1"}),
            Host("hn2", 4096, 8, storage={"sn2", "sn3"}),
            Host("hn3", 2048, 8),
        )
    )
    assert place(snapshot, Request("a", 1, 1, storage={"sn3", "sn4"})).host == "hn2"
    assert place(snapshot, Request("b", 1, 1)).host == "hn1"
    assert place(snapshot, Request("c", 1, 1, storage={"sn9"})).host is None


def test_candidates_come_chosen_then_fitting_in_policy_order_then_rejected_in_snapshot_order():
    snapshot = Snapshot(
        hosts=(
            Host("hn1", 1024, 8, drained=True),
            Host("hn2", 2048, 8),
            Host("hn3", 512, 8),
            Host("hn4", 8192, 8),
            Host("hn5", 4096, 8),
        )
    )
    placement = place(snapshot, Request("vm", 1024, 1))
    assert [c.host for c in placement.candidates] == ["hn4", "hn5", "hn2", "hn1", "hn3"]
    assert [c.fits for c in placement.candidates] == [True, True, True, False, False]


def test_pinned_host_is_the_only_candidate_even_if_others_are_better():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8), Host("hn2", 1024, 1)))
    placement = place(snapshot, Request("vm", 1024, 1, host="hn2"))
    assert placement.host == "hn2"
    assert placement.reason == "chosen: pinned to this host"
    assert [c.host for c in placement.candidates] == ["hn2"]


def test_pinned_host_that_cannot_take_it_says_why():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8), Host("hn2", 8192, 8, maintenance=True)))
    placement = place(snapshot, Request("vm", 1024, 1, host="hn2"))
    assert placement.host is None
    assert placement.reason == "pinned host hn2 cannot take it: in maintenance"
    assert [(c.host, c.reason) for c in placement.candidates] == [("hn2", "in maintenance")]


def test_pinned_to_unknown_host_is_an_error():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8),))
    with pytest.raises(SchedulerError, match="pinned to unknown host 'hn9'"):
        place(snapshot, Request("vm", 1, 1, host="hn9"))
    with pytest.raises(SchedulerError, match="pinned to unknown host 'hn9'"):
        place_all(snapshot, [Request("vm", 1, 1, host="hn9")])


def test_no_fit_summary_groups_hosts_by_rule():
    hosts = [Host(f"hn{i}", 8192, 8, drained=True) for i in range(1, 6)]
    hosts += [
        Host("hn6", 1024, 8),
        Host("hn7", 1536, 8),
        Host("hn8", 8192, 1),
        Host("hn9", 8192, 8, reachable=False),
        Host("hn10", 8192, 8, storage={"sn9"}),
        Host("hn11", 8192, 8, storage={"sn1"}),
    ]
    snapshot = Snapshot(
        hosts=tuple(hosts), instances=(Instance("web-1", 0, 0, "hn11", group="web"),)
    )
    placement = place(snapshot, Request("web-2", 2048, 2, group="web", storage={"sn1"}))
    assert placement.host is None
    # Up to three hosts are named, more are counted.
    assert placement.reason == (
        "no host fits: 5 hosts drained; hn9 unreachable; 4 hosts without a path to sn1; "
        "hn11 already running group web"
    )


def test_no_fit_summary_gives_the_most_free_capacity():
    snapshot = Snapshot(hosts=(Host("hn1", 1024, 8), Host("hn2", 1536, 8), Host("hn3", 8192, 2)))
    placement = place(snapshot, Request("vm", 2048, 4))
    assert placement.reason == (
        "no host fits: hn1, hn2 short of memory (needs 2048 MiB, at most 1536 free); "
        "hn3 short of vCPUs (needs 4, at most 2 free)"
    )


def test_empty_cluster_has_nowhere_to_place():
    placement = place(Snapshot(hosts=()), Request("vm", 1, 1))
    assert (placement.host, placement.candidates, placement.reason) == (
        None,
        (),
        "no hosts to choose from",
    )


def test_vcpu_overcommit_lets_more_vcpus_fit():
    hosts = (Host("hn1", 8192, 4),)
    assert place(Snapshot(hosts=hosts), Request("vm", 1, 6)).host is None
    assert place(Snapshot(hosts=hosts, vcpu_overcommit=1.5), Request("vm", 1, 6)).host == "hn1"


def test_place_all_sees_earlier_placements():
    snapshot = Snapshot(hosts=(Host("hn1", 4096, 4), Host("hn2", 4096, 4)))
    requests = [
        Request("web-1", 2048, 1, group="web"),
        Request("web-2", 2048, 1, group="web"),
        Request("web-3", 1024, 1, group="web"),  # both hosts already run a web
        Request("big", 2048, 2),
        Request("big2", 2048, 2),
        Request("big3", 2048, 2),  # nothing left
        Request("tiny", 0, 0, host="hn1"),
    ]
    assert place_all(snapshot, requests) == ("hn1", "hn2", None, "hn1", "hn2", None, "hn1")
    assert place_all(snapshot, requests, "pack") == ("hn1", "hn2", None, "hn1", "hn2", None, "hn1")


def _random_cluster(rng: random.Random, hosts: int, instances: int) -> Snapshot:
    nodes = [f"sn{i}" for i in range(6)]
    host_list = [
        Host(
            f"hn{i}",
            memory_mib=rng.choice([4096, 8192, 16384]),
            vcpus=rng.choice([4, 8, 16]),
            drained=rng.random() < 0.05,
            reachable=rng.random() > 0.05,
            maintenance=rng.random() < 0.05,
            storage=frozenset(rng.sample(nodes, rng.randint(0, 3))),
        )
        for i in range(hosts)
    ]
    running = [
        Instance(
            f"i{j}",
            rng.choice([512, 1024, 2048]),
            rng.randint(1, 4),
            rng.choice(host_list).name,
            group=rng.choice([None, None, "g1", "g2", "g3"]),
            storage=frozenset(rng.sample(nodes, rng.randint(0, 2))),
        )
        for j in range(instances)
    ]
    return Snapshot(hosts=tuple(host_list), instances=tuple(running))


@pytest.mark.parametrize("policy", ["spread", "pack"])
@pytest.mark.parametrize("seed", range(3))
def test_place_all_equals_place_one_by_one_on_random_clusters(policy, seed):
    rng = random.Random(seed)
    snapshot = _random_cluster(rng, hosts=40, instances=60)
    nodes = [f"sn{i}" for i in range(6)]
    requests = [
        Request(
            f"r{k}",
            rng.choice([256, 512, 1024, 2048, 4096]),
            rng.randint(0, 4),
            group=rng.choice([None, None, "g1", "g2", "g3", "g4"]),
            storage=frozenset(rng.sample(nodes, rng.randint(0, 2))),
        )
        for k in range(200)
    ]
    bulk = place_all(snapshot, requests, policy)
    instances = list(snapshot.instances)
    for request, host in zip(requests, bulk, strict=True):
        current = Snapshot(hosts=snapshot.hosts, instances=tuple(instances))
        assert place(current, request, policy).host == host
        if host is not None:
            instances.append(
                Instance(
                    request.name,
                    request.memory_mib,
                    request.vcpus,
                    host,
                    group=request.group,
                    storage=request.storage,
                )
            )
    assert sum(h is None for h in bulk) < len(bulk)  # the test placed something


def test_source_is_never_chosen_and_says_why():
    snapshot = Snapshot(hosts=(Host("hn1", 8192, 8), Host("hn2", 4096, 8)))
    placement = place(snapshot, Request("vm", 1024, 1), source="hn1")
    assert placement.host == "hn2"
    assert by_host(placement)["hn1"].reason == "the instance is moving off this host"
    assert by_host(placement)["hn1"].verdict is Verdict.SOURCE
