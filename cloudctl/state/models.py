"""Records the store hands out: frozen snapshots, never live rows."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cloudctl.inventory import NodeState, Role


@dataclass(frozen=True)
class Node:
    name: str
    mac: str
    role: Role | None
    ip: ipaddress.IPv4Address | None
    state: NodeState
    created_at: float
    updated_at: float
    segment: str | None = None  # storage segment (AoE is layer 2): which snodes an hnode reaches

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mac": self.mac,
            "role": self.role.value if self.role else None,
            "ip": str(self.ip) if self.ip else None,
            "state": self.state.value,
            "segment": self.segment,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: JobState
    params: dict[str, Any]
    result: Any
    error: str | None
    actor: str
    reason: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "actor": self.actor,
            "reason": self.reason,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class ProgressLine:
    job_id: int
    seq: int
    at: float
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "line": self.line}


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    reason: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: ipaddress.IPv4Address
    expires: float
    hostname: str | None
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "mac": self.mac,
            "ip": str(self.ip),
            "expires": self.expires,
            "hostname": self.hostname,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class Image:
    """A kernel + initramfs (+ optional Xen hypervisor) imported under a name; never changed."""

    name: str
    kernel_sha256: str
    initrd_sha256: str
    hypervisor_sha256: str | None
    size: int
    created_at: float
    disk_sha256: str | None = None  # a root disk volumes can be created from
    disk_size: int | None = None

    @property
    def multiboot(self) -> bool:
        return self.hypervisor_sha256 is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kernel_sha256": self.kernel_sha256,
            "initrd_sha256": self.initrd_sha256,
            "hypervisor_sha256": self.hypervisor_sha256,
            "multiboot": self.multiboot,
            "disk_sha256": self.disk_sha256,
            "disk_size": self.disk_size,
            "size": self.size,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Profile:
    """What a role boots: one version of it (the active one unless asked otherwise)."""

    role: str
    version: int
    image: str | None
    bios_program: str
    cmdline: str
    hypervisor_args: str
    active: bool
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "version": self.version,
            "image": self.image,
            "bios_program": self.bios_program,
            "cmdline": self.cmdline,
            "hypervisor_args": self.hypervisor_args,
            "active": self.active,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class Leg:
    """One side of a volume: a file on a storage node, exported by AoE as eSHELF.SLOT."""

    snode: str
    shelf: int
    slot: int
    state: str  # active | failed | resyncing

    @property
    def device(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    def to_json(self) -> dict[str, Any]:
        return {
            "snode": self.snode,
            "shelf": self.shelf,
            "slot": self.slot,
            "device": self.device,
            "state": self.state,
        }


@dataclass(frozen=True)
class Volume:
    name: str
    size: int
    origin: str | None
    legs: tuple[Leg, ...]
    assigned: tuple[str, ...]
    created_at: float
    image: str | None = None  # the image whose disk its legs start as

    @property
    def mirrored(self) -> bool:
        return len(self.legs) == 2

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "origin": self.origin,
            "mirrored": self.mirrored,
            "legs": [leg.to_json() for leg in self.legs],
            "assigned": list(self.assigned),
            "image": self.image,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ExportRecord:
    """A storage node's leg of a volume: keep its file; export it only when `exported`."""

    volume: str
    shelf: int
    slot: int
    size: int
    origin: str | None
    allowed_macs: tuple[str, ...]
    exported: bool
    image: str | None = None
    image_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "shelf": self.shelf,
            "slot": self.slot,
            "size": self.size,
            "origin": self.origin,
            "allowed_macs": list(self.allowed_macs),
            "exported": self.exported,
            "image": self.image,
            "image_sha256": self.image_sha256,
        }


class InstanceState(StrEnum):
    """What cloudctl believes an instance is doing; reconciled with libvirt's view."""

    STOPPED = "stopped"  # defined nowhere running; starts again with `instance start`
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    MIGRATING = "migrating"
    FAILED = "failed"  # the last operation failed; `instance show` and its job say why
    LOST = "lost"  # its node stopped answering or no longer has it; failover restarts it


@dataclass(frozen=True)
class Instance:
    """A domU: its size and placement rules, and the hardware node it runs on (if any)."""

    name: str
    uuid: str
    mac: str
    memory_mib: int
    vcpus: int
    node: str | None
    state: InstanceState
    group: str | None
    profile: str
    volume: str | None
    created_at: float
    updated_at: float
    boot: str | None = None  # "pvh" or "hvm"; None: hypervisor.boot of the config

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "boot": self.boot,
            "mac": self.mac,
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "node": self.node,
            "state": self.state.value,
            "group": self.group,
            "profile": self.profile,
            "volume": self.volume,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
