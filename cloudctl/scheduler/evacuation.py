"""Plans that move instances before a host or a storage node goes away: every instance off a
host (`plan_evacuation`), or only those that would lose their last storage path
(`plan_storage_maintenance`). Plans are computed whole, before anything moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from cloudctl.scheduler.model import (
    Instance,
    Move,
    Plan,
    Policy,
    Request,
    SchedulerError,
    Snapshot,
)
from cloudctl.scheduler.placement import PlacementIndex, ledger_from, why_nowhere


def _biggest_first(instance: Instance) -> tuple[int, int, str]:
    # Big instances have the fewest hosts that fit; placing them while capacity is still
    # whole leaves the small ones, which fit almost anywhere, for the gaps.
    return (-instance.memory_mib, -instance.vcpus, instance.name)


def _plan(
    snapshot: Snapshot,
    movers: Iterable[tuple[str, str, Request | str]],
    policy: Policy,
    source: str | None,
) -> Plan:
    # movers: (instance, its host, request to place it, or the reason it cannot move at all).
    # Each move is committed to the working ledger, so later moves see the capacity and the
    # groups of earlier ones. Capacity freed at the source is never handed out again: the plan
    # stays valid whatever order the moves actually run in.
    ledger = ledger_from(snapshot)
    index = PlacementIndex(ledger, policy, source=source)
    moves: list[Move] = []
    stuck: list[tuple[str, str]] = []
    for name, current, request in movers:
        if isinstance(request, str):
            stuck.append((name, request))
            continue
        target = index.choose(request)
        if target is None:
            stuck.append((name, why_nowhere(ledger, request, source)))
        else:
            index.commit(target, request)
            moves.append(Move(instance=name, source=current, target=target))
    return Plan(moves=tuple(moves), stuck=tuple(stuck))


def plan_evacuation(snapshot: Snapshot, host: str, policy: Policy | str = Policy.SPREAD) -> Plan:
    """Move every instance off `host`, biggest first; those that fit nowhere are stuck, with why."""
    policy = Policy.parse(policy)
    snapshot.host(host)
    leaving = sorted(snapshot.instances_on(host), key=_biggest_first)
    movers = ((i.name, host, Request.for_instance(i)) for i in leaving)
    return _plan(snapshot, movers, policy, source=host)


def plan_storage_maintenance(
    snapshot: Snapshot, storage_node: str, policy: Policy | str = Policy.SPREAD
) -> Plan:
    """Move the instances whose host would lose its last path to their volumes without
    `storage_node` onto hosts that keep one; safe instances stay where they are.

    A storage node no host or instance mentions gives an empty plan: the snapshot cannot tell
    a mistyped name from an idle node, so the caller checks the name against the inventory.
    """
    policy = Policy.parse(policy)
    if not isinstance(storage_node, str) or not storage_node:
        raise SchedulerError(f"storage node must be a non-empty name, got {storage_node!r}")
    movers: list[tuple[str, str, Request | str]] = []
    for instance in sorted(snapshot.instances, key=_biggest_first):
        if instance.host is None or not instance.storage:
            continue
        remaining = instance.storage - {storage_node}
        if not snapshot.host(instance.host).storage.isdisjoint(remaining):
            continue
        if not remaining:
            # Not "no volume": every healthy leg is on the node going away, and no move helps.
            what = ", ".join(instance.volumes) or f"the volumes of {instance.name}"
            why = (
                f"every healthy leg of {what} is on {storage_node}: "
                "no host can keep a path; repair a mirror leg first"
            )
            movers.append((instance.name, instance.host, why))
            continue
        request = replace(Request.for_instance(instance), storage=remaining)
        movers.append((instance.name, instance.host, request))
    return _plan(snapshot, movers, policy, source=None)
