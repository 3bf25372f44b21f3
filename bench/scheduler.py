"""Scheduler benchmark: bulk placement onto simulated hosts, and an evacuation plan.

Pure CPU, no root, no network: `.venv/bin/python bench/scheduler.py [--hosts 1000]
[--instances 10000] [--policy spread|pack] [--seed 1] [--repeat 3]`. The bar is 10,000
placements (each seeing the ones before) onto 1,000 hosts in under 1 s.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

BAR_SECONDS = 1.0
HOSTS_PER_SEGMENT = 125  # hosts sharing one storage network segment
STORAGE_PER_SEGMENT = 6
EVACUATED = "hn0"
EVACUATED_INSTANCES = 100
# (memory MiB, vCPUs) of instance flavours, with their weights.
FLAVOURS = [(512, 1), (1024, 1), (2048, 2), (4096, 2), (8192, 4), (16384, 8)]
FLAVOUR_WEIGHTS = [10, 25, 30, 20, 10, 5]


def build_cluster(rng: random.Random, count: int) -> tuple[list[Host], list[list[str]]]:
    """Hosts of four sizes in segments; a few drained, unreachable, in maintenance or with a
    failed storage path. Returns the hosts and each segment's storage nodes."""
    segments = max(1, count // HOSTS_PER_SEGMENT)
    storage = [
        [f"sn{s * STORAGE_PER_SEGMENT + k}" for k in range(STORAGE_PER_SEGMENT)]
        for s in range(segments)
    ]
    sizes = [(65536, 16), (131072, 32), (262144, 64), (524288, 128)]
    hosts = []
    for i in range(count):
        segment = storage[i % segments]
        reach = set(segment)
        if rng.random() < 0.03:
            reach.discard(rng.choice(segment))  # one failed path
        memory, vcpus = rng.choice(sizes)
        if i == 0:
            # The host to evacuate: big, drained (as before an evacuation), 100 instances.
            memory, vcpus = 1048576, 256
        hosts.append(
            Host(
                name=f"hn{i}",
                memory_mib=memory,
                vcpus=vcpus,
                drained=i == 0 or rng.random() < 0.02,
                reachable=rng.random() > 0.01,
                maintenance=rng.random() < 0.01,
                storage=frozenset(reach),
                memory_reserved_mib=2048,
            )
        )
    return hosts, storage


def make_requests(
    rng: random.Random, count: int, storage: list[list[str]], prefix: str
) -> list[Request]:
    """Instances of mixed flavours; most with a volume mirrored on two storage nodes of one
    segment; some in small anti-affinity groups, some in five large stateless ones."""
    requests = []
    for n in range(count):
        memory, vcpus = rng.choices(FLAVOURS, FLAVOUR_WEIGHTS)[0]
        legs: frozenset[str] = frozenset()
        group = None
        roll = rng.random()
        if roll < 0.05:
            group = f"web{rng.randrange(5)}"  # stateless, ~100 members each at 10,000
        else:
            legs = frozenset(rng.sample(rng.choice(storage), 2))
            if roll < 0.35:
                group = f"g{rng.randrange(400)}"
        requests.append(
            Request(
                name=f"{prefix}{n}",
                memory_mib=memory,
                vcpus=vcpus,
                group=group,
                storage=legs,
                volumes=(f"{prefix}{n}-vol",) if legs else (),
            )
        )
    return requests


def as_instance(request: Request, host: str | None) -> Instance:
    return Instance(
        name=request.name,
        memory_mib=request.memory_mib,
        vcpus=request.vcpus,
        host=host,
        group=request.group,
        storage=request.storage,
        volumes=request.volumes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--policy", choices=["spread", "pack"], default="spread")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of the bulk placement")
    parser.add_argument(
        "--check", type=int, default=300, help="placements to re-check with the explained path"
    )
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.instances < 0 or args.repeat < 1:
        parser.error("--hosts and --repeat must be at least 1, --instances at least 0")

    rng = random.Random(args.seed)
    hosts, storage = build_cluster(rng, args.hosts)
    on_evacuated = [
        as_instance(r, EVACUATED)
        # Their volumes are on the evacuated host's own segment (segment 0), as placement
        # would have put them.
        for r in make_requests(rng, EVACUATED_INSTANCES, storage[:1], prefix="ev")
    ]
    snapshot = Snapshot(hosts=tuple(hosts), instances=tuple(on_evacuated))
    requests = make_requests(rng, args.instances, storage, prefix="vm")
    excluded = sum(h.drained or not h.reachable or h.maintenance for h in hosts)
    print(
        f"cluster: {len(hosts)} hosts ({excluded} drained, unreachable or in maintenance), "
        f"{len(storage) * STORAGE_PER_SEGMENT} storage nodes in {len(storage)} segments, "
        f"policy {args.policy}, seed {args.seed}"
    )

    seconds = []
    chosen: tuple[str | None, ...] = ()
    for _ in range(args.repeat):
        start = time.perf_counter()
        chosen = place_all(snapshot, requests, args.policy)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    placed = sum(host is not None for host in chosen)
    print(
        f"bulk place_all: {len(requests)} placements, {placed} placed, "
        f"{len(requests) - placed} nowhere to go"
    )
    print("  runs (s): " + ", ".join(f"{s:.3f}" for s in seconds))
    rate = len(requests) / median if median else float("inf")
    print(f"  median {median:.3f} s, {rate:,.0f} decisions/s")
    verdict = "met" if median < BAR_SECONDS else "NOT met"
    print(f"  bar: {len(requests)} placements < {BAR_SECONDS:.0f} s: {verdict}")

    # The explained path on the first placements of the same sequence: same choices, and what
    # a full scan with reasons costs per decision.
    check = min(args.check, len(requests))
    instances = list(snapshot.instances)
    start = time.perf_counter()
    for request, host in zip(requests[:check], chosen[:check], strict=True):
        current = Snapshot(hosts=snapshot.hosts, instances=tuple(instances))
        explained = place(current, request, args.policy)
        if explained.host != host:
            print(f"MISMATCH at {request.name}: bulk {host}, explained {explained.host}")
            return 1
        if host is not None:
            instances.append(as_instance(request, host))
    if check:
        per = (time.perf_counter() - start) / check * 1000
        print(
            f"explained place(): first {check} choices identical, {per:.2f} ms per decision "
            "(snapshot built + full scan with reasons)"
        )

    final = Snapshot(
        hosts=snapshot.hosts,
        instances=(
            *snapshot.instances,
            *(as_instance(r, h) for r, h in zip(requests, chosen, strict=True) if h),
        ),
    )
    start = time.perf_counter()
    plan = plan_evacuation(final, EVACUATED, args.policy)
    took = time.perf_counter() - start
    print(
        f"plan_evacuation({EVACUATED}, {EVACUATED_INSTANCES} instances, "
        f"{len(final.instances)} in the snapshot): {took * 1000:.1f} ms, "
        f"{len(plan.moves)} moves, {len(plan.stuck)} stuck"
    )
    for name, reason in plan.stuck[:3]:
        print(f"  stuck {name}: {reason}")

    node = storage[0][0]
    start = time.perf_counter()
    plan = plan_storage_maintenance(final, node, args.policy)
    took = time.perf_counter() - start
    print(
        f"plan_storage_maintenance({node}): {took * 1000:.1f} ms, "
        f"{len(plan.moves)} moves, {len(plan.stuck)} stuck"
    )
    for name, reason in plan.stuck[:3]:
        print(f"  stuck {name}: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
