"""Placement: choose a host for a request, by full scan with a reason per host (`place`), or
through a sorted index for many requests in a row (`place_all`). Both apply the same rules
and the same order, so they always choose the same host; the tests hold them to that.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cloudctl.scheduler.model import (
    Candidate,
    Placement,
    Policy,
    Request,
    SchedulerError,
    Snapshot,
    Verdict,
)

# A host's place in policy order: smaller is preferred. The name is last, so keys are unique
# and the choice never depends on the order of hosts in the snapshot.
SortKey = tuple[int, int, str]


@dataclass(slots=True)
class HostState:
    """Working copy of one host while a decision (or a plan) is made; never part of a result."""

    name: str
    free_memory: int
    free_vcpus: int
    groups: dict[str, str]  # group -> one instance of it on this host (for the reason)
    # DRAINED, UNREACHABLE or MAINTENANCE if the host takes nothing, else None.
    excluded: Verdict | None
    storage: frozenset[str]


def ledger_from(snapshot: Snapshot) -> dict[str, HostState]:
    """Per-host working state, in snapshot order: free capacity and groups already present."""
    ledger: dict[str, HostState] = {}
    for host in snapshot.hosts:
        excluded = None
        if host.drained:
            excluded = Verdict.DRAINED
        elif not host.reachable:
            excluded = Verdict.UNREACHABLE
        elif host.maintenance:
            excluded = Verdict.MAINTENANCE
        ledger[host.name] = HostState(
            name=host.name,
            free_memory=snapshot.free_memory_mib(host.name),
            free_vcpus=snapshot.free_vcpus(host.name),
            groups={},
            excluded=excluded,
            storage=host.storage,
        )
    for instance in snapshot.instances:
        if instance.host is not None and instance.group is not None:
            ledger[instance.host].groups.setdefault(instance.group, instance.name)
    return ledger


def sort_key(policy: Policy, state: HostState) -> SortKey:
    if policy is Policy.SPREAD:
        return (-state.free_memory, -state.free_vcpus, state.name)
    return (state.free_memory, state.free_vcpus, state.name)


def account_for(state: HostState, request: Request) -> None:
    """Take `request`'s memory, vCPUs and group on `state`'s host."""
    state.free_memory -= request.memory_mib
    state.free_vcpus -= request.vcpus
    if request.group is not None:
        state.groups.setdefault(request.group, request.name)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


_EXCLUDED_REASON = {
    Verdict.DRAINED: "drained",
    Verdict.UNREACHABLE: "unreachable",
    Verdict.MAINTENANCE: "in maintenance",
}


def judge(state: HostState, request: Request, source: str | None = None) -> tuple[Verdict, str]:
    """The first rule `state`'s host breaks for `request` and why, or FITS."""
    if state.name == source:
        return Verdict.SOURCE, "the instance is moving off this host"
    if state.excluded is not None:
        return state.excluded, _EXCLUDED_REASON[state.excluded]
    if request.storage and state.storage.isdisjoint(request.storage):
        what = ", ".join(request.volumes) or request.name
        nodes = ", ".join(sorted(request.storage))
        return Verdict.STORAGE, f"cannot reach storage of {what} ({nodes})"
    if request.group is not None and request.group in state.groups:
        other = state.groups[request.group]
        return (
            Verdict.ANTI_AFFINITY,
            f"anti-affinity: group {request.group} already on {state.name} ({other})",
        )
    if state.free_memory < request.memory_mib:
        return Verdict.MEMORY, f"needs {request.memory_mib} MiB, {state.free_memory} free"
    if state.free_vcpus < request.vcpus:
        return (
            Verdict.VCPUS,
            f"needs {_plural(request.vcpus, 'vCPU')}, {state.free_vcpus} free",
        )
    return Verdict.FITS, f"fits: {state.free_memory} MiB, {_plural(state.free_vcpus, 'vCPU')} free"


def _chosen_reason(policy: Policy, ranked: Sequence[HostState]) -> str:
    # Say which criterion actually decided, so a tie on memory is not reported as "most free
    # memory" when vCPUs or the name settled it.
    if len(ranked) == 1:
        return "chosen: only host that fits"
    best, runner_up = ranked[0], ranked[1]
    if policy is Policy.SPREAD:
        first, second = "most free memory", "most free vCPUs"
    else:
        first, second = "least free memory that fits", "fewest free vCPUs"
    if best.free_memory != runner_up.free_memory:
        return f"chosen: {first} ({policy})"
    if best.free_vcpus != runner_up.free_vcpus:
        return f"chosen: {first}, then {second} ({policy})"
    return f"chosen: {first} and vCPUs tied, first by name ({policy})"


def _host_list(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} hosts"


def summarise(request: Request, rejected: Sequence[tuple[HostState, Verdict]]) -> str:
    """One line saying why no host fits, grouped by rule, for a plan's stuck list or the CLI."""
    if not rejected:
        return "no hosts to choose from"
    by_verdict: dict[Verdict, list[HostState]] = {}
    for state, verdict in rejected:
        by_verdict.setdefault(verdict, []).append(state)
    parts = []
    for verdict in Verdict:
        states = by_verdict.get(verdict)
        if not states:
            continue
        hosts = _host_list([s.name for s in states])
        if verdict is Verdict.SOURCE:
            parts.append(f"{hosts} is the host it moves off")
        elif verdict in _EXCLUDED_REASON:
            parts.append(f"{hosts} {_EXCLUDED_REASON[verdict]}")
        elif verdict is Verdict.STORAGE:
            parts.append(f"{hosts} without a path to {', '.join(sorted(request.storage))}")
        elif verdict is Verdict.ANTI_AFFINITY:
            parts.append(f"{hosts} already running group {request.group}")
        elif verdict is Verdict.MEMORY:
            most = max(s.free_memory for s in states)
            parts.append(
                f"{hosts} short of memory (needs {request.memory_mib} MiB, at most {most} free)"
            )
        elif verdict is Verdict.VCPUS:
            most = max(s.free_vcpus for s in states)
            parts.append(f"{hosts} short of vCPUs (needs {request.vcpus}, at most {most} free)")
    return "no host fits: " + "; ".join(parts)


def why_nowhere(ledger: dict[str, HostState], request: Request, source: str | None = None) -> str:
    """The summary `explain` gives when no host fits, without building every candidate
    (a quarter of the cost); only for an unpinned request already known to fit nowhere."""
    return summarise(request, [(s, judge(s, request, source)[0]) for s in ledger.values()])


def _candidate(state: HostState, verdict: Verdict, reason: str) -> Candidate:
    return Candidate(
        host=state.name,
        fits=verdict in (Verdict.CHOSEN, Verdict.FITS),
        reason=reason,
        free_memory_mib=state.free_memory,
        free_vcpus=state.free_vcpus,
        verdict=verdict,
    )


def explain(
    ledger: dict[str, HostState],
    request: Request,
    policy: Policy,
    source: str | None = None,
) -> Placement:
    """Full scan of `ledger` for `request`: the choice and one candidate per host considered."""
    if request.host is not None:
        if request.host not in ledger:
            raise SchedulerError(
                f"request {request.name} is pinned to unknown host {request.host!r}"
            )
        states: Iterable[HostState] = (ledger[request.host],)
    else:
        states = ledger.values()
    fitting: list[tuple[HostState, str]] = []
    rejected: list[tuple[HostState, Verdict, str]] = []
    for state in states:
        verdict, reason = judge(state, request, source)
        if verdict is Verdict.FITS:
            fitting.append((state, reason))
        else:
            rejected.append((state, verdict, reason))
    fitting.sort(key=lambda pair: sort_key(policy, pair[0]))
    candidates = [_candidate(s, Verdict.FITS, reason) for s, reason in fitting]
    candidates += [_candidate(s, verdict, reason) for s, verdict, reason in rejected]
    if fitting:
        best = fitting[0][0]
        if request.host is not None:
            reason = "chosen: pinned to this host"
        else:
            reason = _chosen_reason(policy, [s for s, _ in fitting[:2]])
        candidates[0] = _candidate(best, Verdict.CHOSEN, reason)
        return Placement(host=best.name, candidates=tuple(candidates), reason=reason)
    if request.host is not None:
        state, _, why = rejected[0]
        reason = f"pinned host {state.name} cannot take it: {why}"
    else:
        reason = summarise(request, [(s, v) for s, v, _ in rejected])
    return Placement(host=None, candidates=tuple(candidates), reason=reason)


def place(
    snapshot: Snapshot,
    request: Request,
    policy: Policy | str = Policy.SPREAD,
    source: str | None = None,
) -> Placement:
    """Choose a host for `request` and explain, host by host, why each was or was not chosen.

    `source`, if given, is never chosen (the host a migration or evacuation leaves); it is a
    name only, not checked against the snapshot.
    """
    return explain(ledger_from(snapshot), request, Policy.parse(policy), source)


class PlacementIndex:
    """Hosts that can take instances, kept sorted by policy key for many placements in a row.

    There is one sorted list per distinct host storage set, so a request only walks hosts that
    reach its volumes; clusters have few distinct sets (one per storage segment plus the odd
    host with a failed path). Within a list the first host that passes the remaining rules is
    that list's best, and the best of those is exactly what `explain` would choose.
    """

    def __init__(
        self, ledger: dict[str, HostState], policy: Policy, source: str | None = None
    ) -> None:
        self._ledger = ledger
        self._policy = policy
        self._source = source
        self._lists: dict[frozenset[str], list[SortKey]] = {}
        for state in ledger.values():
            if state.excluded is None and state.name != source:
                self._lists.setdefault(state.storage, []).append(sort_key(policy, state))
        for keys in self._lists.values():
            keys.sort()
        self._matching: dict[frozenset[str], list[list[SortKey]]] = {}
        # Sizes that found no host, per (group, storage). Hosts only lose capacity and gain
        # groups here, so a request at least as big with the same group and storage cannot
        # fit either: a full cluster answers at once instead of walking every host each time.
        self._failed: dict[tuple[str | None, frozenset[str]], list[tuple[int, int]]] = {}

    def _lists_for(self, storage: frozenset[str]) -> list[list[SortKey]]:
        # Lists are updated in place and never replaced, so caching them per storage set is safe.
        found = self._matching.get(storage)
        if found is None:
            found = [
                keys
                for reach, keys in self._lists.items()
                if not storage or not reach.isdisjoint(storage)
            ]
            self._matching[storage] = found
        return found

    def choose(self, request: Request) -> str | None:
        """The host `explain` would choose for `request`, without building any candidate."""
        if request.host is not None:
            state = self._ledger.get(request.host)
            if state is None:
                raise SchedulerError(
                    f"request {request.name} is pinned to unknown host {request.host!r}"
                )
            fits = judge(state, request, self._source)[0] is Verdict.FITS
            return request.host if fits else None
        need_memory = request.memory_mib
        need_vcpus = request.vcpus
        group = request.group
        shape = (group, request.storage)
        failed = self._failed.get(shape)
        if failed is not None:
            for memory, vcpus in failed:
                if memory <= need_memory and vcpus <= need_vcpus:
                    return None
        ledger = self._ledger
        best: SortKey | None = None
        if self._policy is Policy.SPREAD:
            # Keys are (-free memory, -free vCPUs, name): once memory is short, the rest is too.
            for keys in self._lists_for(request.storage):
                if not keys or (best is not None and keys[0] >= best):
                    continue
                for key in keys:
                    if -key[0] < need_memory or (best is not None and key >= best):
                        break
                    if -key[1] < need_vcpus:
                        continue
                    if group is not None and group in ledger[key[2]].groups:
                        continue
                    best = key
                    break
        else:
            # Keys are (free memory, free vCPUs, name): start at the first with enough memory.
            probe = (need_memory,)
            for keys in self._lists_for(request.storage):
                position = bisect_left(keys, probe)
                end = len(keys)
                while position < end:
                    key = keys[position]
                    if best is not None and key >= best:
                        break
                    if key[1] >= need_vcpus and (
                        group is None or group not in ledger[key[2]].groups
                    ):
                        best = key
                        break
                    position += 1
        if best is None:
            self._failed.setdefault(shape, []).append((need_memory, need_vcpus))
            return None
        return best[2]

    def commit(self, host: str, request: Request) -> None:
        """Account for `request` placed on `host`, moving the host to its new place in order."""
        state = self._ledger[host]
        keys = self._lists.get(state.storage)
        old = sort_key(self._policy, state)
        account_for(state, request)
        if keys is None:
            return
        position = bisect_left(keys, old)
        if position < len(keys) and keys[position] == old:
            del keys[position]
            insort(keys, sort_key(self._policy, state))


def place_all(
    snapshot: Snapshot, requests: Iterable[Request], policy: Policy | str = Policy.SPREAD
) -> tuple[str | None, ...]:
    """Place `requests` one after another, each seeing the ones before; host or None for each.

    Gives exactly the choices of calling `place` on each request with the earlier ones added
    to the snapshot, without the per-host explanations (use `place` to explain one).
    """
    index = PlacementIndex(ledger_from(snapshot), Policy.parse(policy))
    chosen: list[str | None] = []
    for request in requests:
        host = index.choose(request)
        if host is not None:
            index.commit(host, request)
        chosen.append(host)
    return tuple(chosen)
