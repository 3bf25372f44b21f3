"""The scheduler's frozen data: hosts, instances and the snapshot they form, requests, and the
placements and plans the scheduler returns. Validation of input lives here, so every decision
function can trust what it is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class SchedulerError(ValueError):
    """Input the scheduler cannot decide on: unknown host, negative size, unknown policy."""


class Policy(StrEnum):
    """How to choose among the hosts that fit."""

    SPREAD = "spread"  # most free memory, then most free vCPUs, then name
    PACK = "pack"  # least free memory that still fits (best fit), then fewest free vCPUs, then name

    @classmethod
    def parse(cls, value: Policy | str) -> Policy:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise SchedulerError(
                f"unknown placement policy {value!r}: expected one of {choices}"
            ) from None


class Verdict(StrEnum):
    """Why a host was or was not chosen; the order is the order in which rules are checked."""

    CHOSEN = "chosen"
    FITS = "fits"
    SOURCE = "source"
    DRAINED = "drained"
    UNREACHABLE = "unreachable"
    MAINTENANCE = "maintenance"
    STORAGE = "storage"
    ANTI_AFFINITY = "anti-affinity"
    MEMORY = "memory"
    VCPUS = "vcpus"


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name:
        raise SchedulerError(f"{kind} name must be a non-empty string, got {name!r}")


def _check_size(owner: str, what: str, value: object) -> None:
    # bool is an int subclass; True MiB is always a caller bug.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchedulerError(f"{owner}: {what} must be a non-negative integer, got {value!r}")


def _storage_set(owner: str, value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        # frozenset("sn1") would silently become {"s", "n", "1"}.
        raise SchedulerError(f"{owner}: storage must be a set of storage node names, not a string")
    return frozenset(value)


@dataclass(frozen=True)
class Host:
    """A hypervisor node. `storage`: storage nodes it has a healthy path to right now."""

    name: str
    memory_mib: int
    vcpus: int
    drained: bool = False
    reachable: bool = True
    maintenance: bool = False
    storage: frozenset[str] = frozenset()
    # Memory the host keeps for itself (dom0, page cache); never offered to instances.
    memory_reserved_mib: int = 0

    def __post_init__(self) -> None:
        _check_name("host", self.name)
        owner = f"host {self.name}"
        _check_size(owner, "memory_mib", self.memory_mib)
        _check_size(owner, "vcpus", self.vcpus)
        _check_size(owner, "memory_reserved_mib", self.memory_reserved_mib)
        object.__setattr__(self, "storage", _storage_set(owner, self.storage))


@dataclass(frozen=True)
class Instance:
    """An instance and where it runs (`host` None: not running, uses no capacity).

    `storage`: storage nodes holding healthy legs of its volumes; empty means no volume.
    `volumes`: names of those volumes, only used to word reasons.
    """

    name: str
    memory_mib: int
    vcpus: int
    host: str | None = None
    group: str | None = None
    storage: frozenset[str] = frozenset()
    volumes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("instance", self.name)
        owner = f"instance {self.name}"
        _check_size(owner, "memory_mib", self.memory_mib)
        _check_size(owner, "vcpus", self.vcpus)
        object.__setattr__(self, "storage", _storage_set(owner, self.storage))
        object.__setattr__(self, "volumes", tuple(self.volumes))


@dataclass(frozen=True)
class Request:
    """An instance to place. `host` pins it: only that host is considered."""

    name: str
    memory_mib: int
    vcpus: int
    group: str | None = None
    storage: frozenset[str] = frozenset()
    host: str | None = None
    volumes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("request", self.name)
        owner = f"request {self.name}"
        _check_size(owner, "memory_mib", self.memory_mib)
        _check_size(owner, "vcpus", self.vcpus)
        object.__setattr__(self, "storage", _storage_set(owner, self.storage))
        object.__setattr__(self, "volumes", tuple(self.volumes))

    @classmethod
    def for_instance(cls, instance: Instance) -> Request:
        """The request that places `instance` again elsewhere (evacuation, maintenance)."""
        return cls(
            name=instance.name,
            memory_mib=instance.memory_mib,
            vcpus=instance.vcpus,
            group=instance.group,
            storage=instance.storage,
            volumes=instance.volumes,
        )


@dataclass(frozen=True)
class Snapshot:
    """Hosts and instances at one moment, with per-host free capacity derived from them.

    vCPU capacity of a host is floor(vcpus * vcpu_overcommit); memory capacity is memory_mib
    minus memory_reserved_mib. Free capacity may be negative if the hosts are overcommitted.
    """

    hosts: tuple[Host, ...]
    instances: tuple[Instance, ...] = ()
    vcpu_overcommit: float = 1.0
    _hosts_by_name: dict[str, Host] = field(init=False, repr=False, compare=False)
    _used: dict[str, tuple[int, int]] = field(init=False, repr=False, compare=False)
    _on: dict[str, list[Instance]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "instances", tuple(self.instances))
        overcommit = self.vcpu_overcommit
        if (
            isinstance(overcommit, bool)
            or not isinstance(overcommit, int | float)
            or not math.isfinite(overcommit)
            or overcommit <= 0
        ):
            raise SchedulerError(f"vcpu_overcommit must be a positive number, got {overcommit!r}")
        by_name: dict[str, Host] = {}
        for host in self.hosts:
            if host.name in by_name:
                raise SchedulerError(f"host {host.name} appears twice in the snapshot")
            by_name[host.name] = host
        used = dict.fromkeys(by_name, (0, 0))
        on: dict[str, list[Instance]] = {name: [] for name in by_name}
        seen: set[str] = set()
        for instance in self.instances:
            if instance.name in seen:
                raise SchedulerError(f"instance {instance.name} appears twice in the snapshot")
            seen.add(instance.name)
            if instance.host is None:
                continue
            if instance.host not in by_name:
                raise SchedulerError(
                    f"instance {instance.name} runs on unknown host {instance.host}: "
                    "every host named by an instance must be in the snapshot"
                )
            on[instance.host].append(instance)
            memory, vcpus = used[instance.host]
            used[instance.host] = (memory + instance.memory_mib, vcpus + instance.vcpus)
        object.__setattr__(self, "_hosts_by_name", by_name)
        object.__setattr__(self, "_used", used)
        object.__setattr__(self, "_on", on)

    def host(self, name: str) -> Host:
        """The host called `name`; SchedulerError if the snapshot has none."""
        try:
            return self._hosts_by_name[name]
        except KeyError:
            raise SchedulerError(f"unknown host {name!r}: not in the snapshot") from None

    def memory_capacity_mib(self, name: str) -> int:
        host = self.host(name)
        return host.memory_mib - host.memory_reserved_mib

    def vcpu_capacity(self, name: str) -> int:
        # The epsilon keeps 100 * 0.57 (56.99999...) at 57.
        return math.floor(self.host(name).vcpus * self.vcpu_overcommit + 1e-9)

    def free_memory_mib(self, name: str) -> int:
        return self.memory_capacity_mib(name) - self._used[name][0]

    def free_vcpus(self, name: str) -> int:
        return self.vcpu_capacity(name) - self._used[name][1]

    def instances_on(self, name: str) -> tuple[Instance, ...]:
        """Instances running on host `name`, in snapshot order."""
        self.host(name)
        return tuple(self._on[name])


@dataclass(frozen=True)
class Candidate:
    """One host as seen by one placement: whether it fits and, in a few words, why."""

    host: str
    fits: bool
    reason: str
    free_memory_mib: int
    free_vcpus: int
    verdict: Verdict


@dataclass(frozen=True)
class Placement:
    """The chosen host (None: nowhere) and every host considered.

    Candidates come in preference order: the chosen host, the other hosts that fit in policy
    order, then those that do not in snapshot order. `reason` is the chosen candidate's reason,
    or a summary of why no host fits.
    """

    host: str | None
    candidates: tuple[Candidate, ...]
    reason: str


@dataclass(frozen=True)
class Move:
    instance: str
    source: str
    target: str


@dataclass(frozen=True)
class Plan:
    """Moves decided before anything moves, and the instances that cannot move, with why.

    The plan never counts on capacity its own moves free, so the moves may run in any order
    or in parallel.
    """

    moves: tuple[Move, ...] = ()
    stuck: tuple[tuple[str, str], ...] = ()

    @property
    def complete(self) -> bool:
        return not self.stuck
