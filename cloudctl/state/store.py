"""The StateStore interface every backend implements (SQLite now; etcd for HA later).

Reads are synchronous and must be index lookups (the DHCP and DNS servers call them per
packet). Writes are coroutines that return only once the change is durable, and every write
that changes the inventory records its audit entry in the same transaction.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from cloudctl.inventory import AddressPool, NodeState, Role
from cloudctl.state.models import (
    AuditEntry,
    ExportRecord,
    Image,
    Instance,
    InstanceState,
    Job,
    JobState,
    Lease,
    Node,
    Profile,
    ProgressLine,
    Volume,
)


@dataclass(frozen=True)
class Change:
    """Who asks for a write, and why; lands in the audit log with the change."""

    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class NodeRequest:
    """A validated `node add`: name and ip are allocated by the store when None."""

    mac: str
    role: Role
    name: str | None = None
    ip: ipaddress.IPv4Address | None = None
    segment: str | None = None


class StateStore(ABC):
    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # nodes
    @abstractmethod
    async def add_node(self, request: NodeRequest, pool: AddressPool, change: Change) -> Node: ...

    @abstractmethod
    async def remove_node(self, name: str, change: Change) -> Node: ...

    @abstractmethod
    async def set_drained(self, name: str, drained: bool, change: Change) -> Node: ...

    @abstractmethod
    async def set_segment(self, name: str, segment: str | None, change: Change) -> Node: ...

    @abstractmethod
    async def accept_node(
        self, mac: str, request: NodeRequest, pool: AddressPool, change: Change
    ) -> Node: ...

    @abstractmethod
    async def record_discovered(self, mac: str) -> Node:
        """Remember an unknown MAC that asked for an address (idempotent)."""

    @abstractmethod
    def get_node(self, name: str) -> Node | None: ...

    @abstractmethod
    def node_by_ip(self, ip: ipaddress.IPv4Address) -> Node | None: ...

    @abstractmethod
    def node_by_mac(self, mac: str) -> Node | None: ...

    @abstractmethod
    def list_nodes(
        self, *, role: Role | None = None, state: NodeState | None = None
    ) -> list[Node]: ...

    @abstractmethod
    def count_nodes(self) -> int: ...

    # DHCP leases
    @abstractmethod
    async def bind_lease(
        self, mac: str, ip: ipaddress.IPv4Address, expires: float, hostname: str | None
    ) -> Lease:
        """Record that `mac` holds `ip` until `expires`; any other holder of `ip` loses it."""

    @abstractmethod
    async def bind_leases(
        self, leases: list[tuple[str, ipaddress.IPv4Address, float, str | None]]
    ) -> None:
        """bind_lease for many at once, in one write (the DHCP server's group commit)."""

    @abstractmethod
    async def end_lease(self, mac: str, at: float) -> None: ...

    @abstractmethod
    async def decline_address(self, ip: ipaddress.IPv4Address, until: float, mac: str) -> None: ...

    @abstractmethod
    def lease_by_mac(self, mac: str) -> Lease | None: ...

    @abstractmethod
    def lease_by_ip(self, ip: ipaddress.IPv4Address) -> Lease | None: ...

    @abstractmethod
    def declined_until(self, ip: ipaddress.IPv4Address) -> float | None: ...

    @abstractmethod
    def list_leases(self) -> list[Lease]: ...

    # boot images and profiles
    @abstractmethod
    async def add_image(self, image: Image, change: Change) -> Image: ...

    @abstractmethod
    async def remove_image(self, name: str, change: Change) -> Image: ...

    @abstractmethod
    def get_image(self, name: str) -> Image | None: ...

    @abstractmethod
    def list_images(self) -> list[Image]: ...

    @abstractmethod
    async def set_profile(
        self,
        role: str,
        *,
        image: str | None,
        bios_program: str,
        cmdline: str,
        hypervisor_args: str,
        change: Change,
    ) -> Profile: ...

    @abstractmethod
    async def rollback_profile(self, role: str, change: Change) -> Profile: ...

    @abstractmethod
    def get_profile(self, role: str) -> Profile | None: ...

    @abstractmethod
    def profile_history(self, role: str) -> list[Profile]: ...

    # volumes and storage maintenance
    @abstractmethod
    async def create_volume(
        self,
        name: str,
        size: int,
        snodes: list[str],
        origin: str | None,
        change: Change,
        image: str | None = None,
    ) -> Volume: ...

    @abstractmethod
    async def remove_volume(self, name: str, change: Change) -> Volume: ...

    @abstractmethod
    async def resize_volume(self, name: str, size: int, change: Change) -> Volume: ...

    @abstractmethod
    async def assign_volume(self, name: str, node: str, assign: bool, change: Change) -> Volume: ...

    @abstractmethod
    def get_volume(self, name: str) -> Volume | None: ...

    @abstractmethod
    def list_volumes(self) -> list[Volume]: ...

    @abstractmethod
    def volumes_assigned_to(self, node: str) -> list[Volume]: ...

    @abstractmethod
    def exports_for(self, snode: str) -> list[ExportRecord]: ...

    @abstractmethod
    async def start_storage_maintenance(self, snode: str, change: Change) -> list[str]: ...

    @abstractmethod
    async def finish_storage_maintenance(self, snode: str, change: Change) -> list[str]: ...

    @abstractmethod
    async def set_leg_state(self, volume: str, snode: str, state: str) -> None: ...

    @abstractmethod
    def storage_in_maintenance(self) -> list[str]: ...

    # instances
    @abstractmethod
    async def create_instance(self, instance: Instance, change: Change) -> Instance: ...

    @abstractmethod
    async def set_instance(
        self,
        name: str,
        *,
        state: InstanceState,
        node: str | None,
        change: Change,
        action: str = "instance.state",
    ) -> Instance: ...

    @abstractmethod
    async def remove_instance(self, name: str, change: Change) -> Instance: ...

    @abstractmethod
    def get_instance(self, name: str) -> Instance | None: ...

    @abstractmethod
    def list_instances(self, *, node: str | None = None) -> list[Instance]: ...

    # audit
    @abstractmethod
    def last_change(self) -> int:
        """Grows with every audited change: DNS uses it as the zone's SOA serial."""

    @abstractmethod
    def list_audit(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]: ...

    # jobs
    @abstractmethod
    async def create_job(self, kind: str, params: dict[str, Any], change: Change) -> Job: ...

    @abstractmethod
    async def set_job_state(
        self, job_id: int, state: JobState, *, result: Any = None, error: str | None = None
    ) -> Job: ...

    @abstractmethod
    async def add_progress(self, job_id: int, line: str) -> ProgressLine: ...

    @abstractmethod
    async def fail_unfinished_jobs(self, error: str) -> list[int]: ...

    @abstractmethod
    def get_job(self, job_id: int) -> Job | None: ...

    @abstractmethod
    def list_jobs(self, *, limit: int = 50) -> list[Job]: ...

    @abstractmethod
    def job_progress(self, job_id: int, *, after: int = 0) -> list[ProgressLine]: ...
