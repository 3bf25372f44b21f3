"""Scheduler: where instances run. Pure functions over a `Snapshot` that return a `Placement`
or a `Plan`; no I/O, no store, no hypervisor. The caller builds the snapshot and acts on plans.

Data model (frozen dataclasses, in `model.py`):
- `Host(name, memory_mib, vcpus, drained, reachable, maintenance, storage,
  memory_reserved_mib)`: `storage` is the set of storage nodes the host has a healthy path to.
- `Instance(name, memory_mib, vcpus, host, group, storage, volumes)`: `host` None means not
  running; `storage` is the set of storage nodes holding healthy legs of its volumes (empty: no
  volume); `group` is an anti-affinity group; `volumes` only names them in reasons.
- `Snapshot(hosts, instances, vcpu_overcommit=1.0)`: free memory and vCPUs per host derived.
- `Request(name, memory_mib, vcpus, group, storage, host, volumes)`: `host` pins it.
- `Placement(host, candidates, reason)` with one `Candidate(host, fits, reason,
  free_memory_mib, free_vcpus, verdict)` per host; `Plan(moves=(Move, ...), stuck=((instance,
  reason), ...))`.

A host fits a request when it is not drained, unreachable or in maintenance, shares a storage
node with the request (or the request has no storage), runs no other member of its group, and
has the memory and vCPUs free. Policy "spread" prefers most free memory, then most free vCPUs;
"pack" the least free memory that fits, then fewest free vCPUs; the host name breaks ties.
Bad input raises `SchedulerError`.
"""

from cloudctl.scheduler.evacuation import plan_evacuation, plan_storage_maintenance
from cloudctl.scheduler.model import (
    Candidate,
    Host,
    Instance,
    Move,
    Placement,
    Plan,
    Policy,
    Request,
    SchedulerError,
    Snapshot,
    Verdict,
)
from cloudctl.scheduler.placement import place, place_all

__all__ = [
    "Candidate",
    "Host",
    "Instance",
    "Move",
    "Placement",
    "Plan",
    "Policy",
    "Request",
    "SchedulerError",
    "Snapshot",
    "Verdict",
    "place",
    "place_all",
    "plan_evacuation",
    "plan_storage_maintenance",
]
