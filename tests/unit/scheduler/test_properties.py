"""Properties of the scheduler on random clusters (hypothesis): placements and plans hold to
every rule as written out plainly here, are deterministic, and the bulk path chooses exactly
what the explained path chooses.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.scheduler import (
    Host,
    Instance,
    Request,
    Snapshot,
    place,
    place_all,
    plan_evacuation,
    plan_storage_maintenance,
)
from cloudctl.scheduler.placement import ledger_from, why_nowhere

NODES = ("sn1", "sn2", "sn3")
GROUPS = (None, None, "a", "b")
POLICIES = st.sampled_from(["spread", "pack"])
FAST = settings(max_examples=150, deadline=None)

rarely = st.integers(0, 4).map(lambda n: n == 0)
storage_sets = st.frozensets(st.sampled_from(NODES))


@st.composite
def snapshots(draw, min_hosts: int = 0, max_hosts: int = 7, max_instances: int = 14):
    # Small sizes on purpose: ties on memory and vCPUs, full hosts and overcommitted ones
    # (an instance may already exceed its host) are all common.
    count = draw(st.integers(min_hosts, max_hosts))
    hosts = [
        Host(
            f"hn{i}",
            memory_mib=draw(st.integers(0, 8)) * 512,
            vcpus=draw(st.integers(0, 6)),
            drained=draw(rarely),
            reachable=not draw(rarely),
            maintenance=draw(rarely),
            storage=draw(storage_sets),
            memory_reserved_mib=draw(st.sampled_from([0, 0, 512])),
        )
        for i in range(count)
    ]
    names = [h.name for h in hosts]
    on = st.sampled_from([None, *names]) if names else st.none()
    instances = [
        Instance(
            f"i{j}",
            memory_mib=draw(st.integers(0, 4)) * 512,
            vcpus=draw(st.integers(0, 3)),
            host=draw(on),
            group=draw(st.sampled_from(GROUPS)),
            storage=draw(storage_sets),
        )
        for j in range(draw(st.integers(0, max_instances)))
    ]
    overcommit = draw(st.sampled_from([1.0, 1.0, 1.5, 2.0]))
    return Snapshot(hosts=tuple(hosts), instances=tuple(instances), vcpu_overcommit=overcommit)


def requests(names: list[str], pinned: bool = True):
    hosts = st.sampled_from([None, None, None, *names]) if names and pinned else st.none()
    return st.builds(
        Request,
        name=st.just("req"),
        memory_mib=st.integers(0, 6).map(lambda n: n * 512),
        vcpus=st.integers(0, 4),
        group=st.sampled_from(GROUPS),
        storage=storage_sets,
        host=hosts,
    )


# The rules, written out independently of the scheduler's code.


def fits(snapshot: Snapshot, host_name: str, request: Request) -> bool:
    host = snapshot.host(host_name)
    if host.drained or not host.reachable or host.maintenance:
        return False
    if request.storage and not host.storage & request.storage:
        return False
    on_host = snapshot.instances_on(host_name)
    if request.group is not None and any(i.group == request.group for i in on_host):
        return False
    return (
        snapshot.free_memory_mib(host_name) >= request.memory_mib
        and snapshot.free_vcpus(host_name) >= request.vcpus
    )


def preference(snapshot: Snapshot, policy: str, name: str) -> tuple:
    memory, vcpus = snapshot.free_memory_mib(name), snapshot.free_vcpus(name)
    return (-memory, -vcpus, name) if policy == "spread" else (memory, vcpus, name)


def with_instance(snapshot: Snapshot, request: Request, host: str, name: str) -> Snapshot:
    added = Instance(
        name, request.memory_mib, request.vcpus, host, group=request.group, storage=request.storage
    )
    return Snapshot(snapshot.hosts, (*snapshot.instances, added), snapshot.vcpu_overcommit)


def within_capacity(snapshot: Snapshot, host: str) -> bool:
    return snapshot.free_memory_mib(host) >= 0 and snapshot.free_vcpus(host) >= 0


@st.composite
def snapshot_and_request(draw, pinned: bool = True):
    snapshot = draw(snapshots())
    return snapshot, draw(requests([h.name for h in snapshot.hosts], pinned))


@FAST
@given(snapshot_and_request(), POLICIES)
def test_place_chooses_the_preferred_host_among_those_that_fit(case, policy):
    snapshot, request = case
    placement = place(snapshot, request, policy)
    considered = [request.host] if request.host else [h.name for h in snapshot.hosts]
    assert sorted(c.host for c in placement.candidates) == sorted(considered)
    for candidate in placement.candidates:
        assert candidate.fits == fits(snapshot, candidate.host, request), candidate
        assert candidate.free_memory_mib == snapshot.free_memory_mib(candidate.host)
        assert candidate.free_vcpus == snapshot.free_vcpus(candidate.host)
        assert candidate.reason
    fitting = [name for name in considered if fits(snapshot, name, request)]
    if not fitting:
        assert placement.host is None
        if request.host is None:
            assert placement.reason == why_nowhere(ledger_from(snapshot), request)
        else:
            assert placement.reason.startswith(f"pinned host {request.host} cannot take it: ")
        return
    assert placement.host == min(fitting, key=lambda n: preference(snapshot, policy, n))
    assert placement.candidates[0].host == placement.host
    assert placement.candidates[0].reason.startswith("chosen")
    assert [c.reason.startswith("chosen") for c in placement.candidates].count(True) == 1
    assert within_capacity(with_instance(snapshot, request, placement.host, "new"), placement.host)


@FAST
@given(snapshot_and_request(), POLICIES, st.randoms(use_true_random=False))
def test_placement_does_not_depend_on_host_or_instance_order(case, policy, rnd):
    snapshot, request = case
    hosts, instances = list(snapshot.hosts), list(snapshot.instances)
    rnd.shuffle(hosts)
    rnd.shuffle(instances)
    shuffled = Snapshot(tuple(hosts), tuple(instances), snapshot.vcpu_overcommit)
    first, again, other = (
        place(snapshot, request, policy),
        place(snapshot, request, policy),
        place(shuffled, request, policy),
    )
    assert first == again
    assert other.host == first.host
    assert other.reason == first.reason or first.host is None
    key = sorted((c.host, c.fits, c.verdict) for c in first.candidates)
    assert sorted((c.host, c.fits, c.verdict) for c in other.candidates) == key


@st.composite
def snapshot_and_requests(draw):
    snapshot = draw(snapshots(max_hosts=6))
    names = [h.name for h in snapshot.hosts]
    batch = draw(st.lists(requests(names), max_size=25))
    return snapshot, [
        Request(f"r{k}", r.memory_mib, r.vcpus, r.group, r.storage, r.host)
        for k, r in enumerate(batch)
    ]


@settings(max_examples=120, deadline=None)
@given(snapshot_and_requests(), POLICIES)
def test_bulk_path_chooses_exactly_what_the_explained_path_chooses(case, policy):
    snapshot, batch = case
    bulk = place_all(snapshot, batch, policy)
    assert len(bulk) == len(batch)
    current = snapshot
    for request, host in zip(batch, bulk, strict=True):
        assert place(current, request, policy).host == host
        if host is not None:
            assert fits(current, host, request)
            current = with_instance(current, request, host, request.name)
            assert within_capacity(current, host)


@st.composite
def snapshot_and_host(draw):
    snapshot = draw(snapshots(min_hosts=1))
    return snapshot, draw(st.sampled_from([h.name for h in snapshot.hosts]))


@FAST
@given(snapshot_and_host(), POLICIES)
def test_evacuation_plan_holds_to_every_rule(case, policy):
    snapshot, source = case
    plan = plan_evacuation(snapshot, source, policy)
    leaving = {i.name: i for i in snapshot.instances_on(source)}
    planned = [m.instance for m in plan.moves] + [name for name, _ in plan.stuck]
    assert sorted(planned) == sorted(leaving)
    # Replay the moves, keeping each moved instance on its source too: the plan must not
    # count on capacity it frees, so it has to hold in that state.
    current = snapshot
    for move in plan.moves:
        assert move.source == source and move.target != source
        request = Request.for_instance(leaving[move.instance])
        assert fits(current, move.target, request)
        current = with_instance(current, request, move.target, f"{move.instance}@moved")
    # Capacity only shrinks and groups only grow as moves are added, so what was stuck when
    # the plan gave up is stuck at the end.
    for name, reason in plan.stuck:
        request = Request.for_instance(leaving[name])
        assert not any(fits(current, h.name, request) for h in snapshot.hosts if h.name != source)
        assert reason.startswith("no host fits")
    assert plan_evacuation(snapshot, source, policy) == plan


@st.composite
def snapshot_and_storage_node(draw):
    return draw(snapshots(min_hosts=1)), draw(st.sampled_from(NODES))


@FAST
@given(snapshot_and_storage_node(), POLICIES)
def test_storage_maintenance_plan_moves_exactly_the_unsafe_instances(case, policy):
    snapshot, node = case
    plan = plan_storage_maintenance(snapshot, node, policy)
    unsafe = {
        i.name: i
        for i in snapshot.instances
        if i.host is not None
        and i.storage
        and not (snapshot.host(i.host).storage - {node}) & (i.storage - {node})
    }
    planned = [m.instance for m in plan.moves] + [name for name, _ in plan.stuck]
    assert sorted(planned) == sorted(unsafe)
    current = snapshot
    for move in plan.moves:
        instance = unsafe[move.instance]
        assert move.source == instance.host
        remaining = instance.storage - {node}
        assert snapshot.host(move.target).storage & remaining
        request = Request.for_instance(instance)
        assert fits(current, move.target, request)
        current = with_instance(current, request, move.target, f"{move.instance}@moved")
    for name, _ in plan.stuck:
        instance = unsafe[name]
        remaining = instance.storage - {node}
        request = Request(name, instance.memory_mib, instance.vcpus, instance.group, remaining)
        assert not remaining or not any(fits(current, h.name, request) for h in snapshot.hosts)
