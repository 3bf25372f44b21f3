"""Instances on hardware nodes: the scheduler's view of the cloud, and start/stop/reboot/destroy.

The scheduler decides from a snapshot (capacity as each node's libvirt reports it, instances
from the store); this module turns decisions into libvirt calls and store updates, one instance
at a time under its own lock, so the reconciler never judges a half-done operation. The store
is the source of truth for which instances exist: libvirt holds only the running ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt

from cloudctl import scheduler
from cloudctl.config import Config
from cloudctl.inventory import NodeState, Role
from cloudctl.jobs import JobContext, JobError
from cloudctl.pxe.catalog import default_profile
from cloudctl.scheduler.placement import explain, ledger_from
from cloudctl.state import StateStore
from cloudctl.state.models import Instance, InstanceState, Volume
from cloudctl.state.store import Change
from cloudctl.xen.domxml import Disk, DomainSpecError, InstanceSpec, Nic, domain_xml
from cloudctl.xen.hosts import HostLink, HostPool, HypervisorError

log = logging.getLogger(__name__)

SYSTEM = Change(actor="cloudctld")
# States in which an instance holds capacity on its node.
PLACED = (
    InstanceState.STARTING,
    InstanceState.RUNNING,
    InstanceState.STOPPING,
    InstanceState.MIGRATING,
    InstanceState.LOST,
)
START_WAIT_SECONDS = 60.0


def _healthy_legs(volume: Volume) -> frozenset[str]:
    """The storage nodes holding an active leg of `volume`."""
    return frozenset(leg.snode for leg in volume.legs if leg.state == "active")


def _reach(segment: str | None, snodes: dict[str, str | None]) -> frozenset[str]:
    """AoE is layer 2: a node reaches the storage nodes of its segment and those without one;
    a node without a segment reaches them all."""
    if segment is None:
        return frozenset(snodes)
    return frozenset(name for name, theirs in snodes.items() if theirs in (None, segment))


class Hypervisors:
    """Store + libvirt links + scheduler, and the instance operations built on them."""

    def __init__(self, store: StateStore, config: Config, pool: HostPool) -> None:
        self.store = store
        self.config = config
        self.hv = config.hypervisor
        self.pool = pool
        self._locks: dict[str, asyncio.Lock] = {}
        self.busy: set[str] = set()  # instances an operation is acting on right now
        # Migrations in flight: instance -> target, so concurrent placements see the capacity.
        self.arriving: dict[str, str] = {}

    # -- the view ------------------------------------------------------------------------

    def hnodes(self) -> list:
        return [
            n
            for n in self.store.list_nodes(role=Role.HNODE)
            if n.state in (NodeState.REGISTERED, NodeState.DRAINED)
        ]

    def link(self, node_name: str) -> HostLink:
        node = self.store.get_node(node_name)
        if node is None or node.role is not Role.HNODE:
            raise JobError(f"no hardware node named {node_name!r}")
        return self.pool.link(node.name, str(node.ip) if node.ip else None, node.mac)

    def _storage_of(self, instance: Instance) -> frozenset[str]:
        if instance.volume is None:
            return frozenset()
        volume = self.store.get_volume(instance.volume)
        return _healthy_legs(volume) if volume is not None else frozenset()

    def _segments(self, in_service: frozenset[str] | None = None) -> dict[str, str | None]:
        """Storage nodes (all, or those in `in_service`) -> their storage segment."""
        return {
            n.name: n.segment
            for n in self.store.list_nodes(role=Role.SNODE)
            if in_service is None or n.name in in_service
        }

    def reachable_storage(self, hnode: str, in_service: frozenset[str]) -> frozenset[str]:
        """Storage nodes `hnode` has a path to (see _reach)."""
        node = self.store.get_node(hnode)
        return _reach(node.segment if node is not None else None, self._segments(in_service))

    def snapshot(self) -> scheduler.Snapshot:
        down = set(self.store.storage_in_maintenance())
        snodes = {name: seg for name, seg in self._segments().items() if name not in down}
        hosts = []
        for node in self.hnodes():
            link = self.pool.links.get(node.name)
            info = link.info if link is not None else None
            hosts.append(
                scheduler.Host(
                    name=node.name,
                    memory_mib=info.memory_mib if info else 0,
                    vcpus=info.vcpus if info else 0,
                    drained=node.state is NodeState.DRAINED,
                    reachable=bool(link is not None and link.reachable and info),
                    storage=_reach(node.segment, snodes),
                )
            )
        names = {h.name for h in hosts}
        # One read of every volume, not one per instance: placements take a snapshot each.
        legs = {v.name: _healthy_legs(v) for v in self.store.list_volumes()}
        instances = []
        for inst in self.store.list_instances():
            placed = inst.node if inst.state in PLACED and inst.node in names else None
            instances.append(
                scheduler.Instance(
                    name=inst.name,
                    memory_mib=inst.memory_mib,
                    vcpus=inst.vcpus,
                    host=placed,
                    group=inst.group,
                    storage=legs.get(inst.volume, frozenset()) if inst.volume else frozenset(),
                    volumes=(inst.volume,) if inst.volume else (),
                )
            )
            target = self.arriving.get(inst.name)
            if target in names:
                # Capacity (and the group) are taken on the target until the move ends.
                instances.append(
                    scheduler.Instance(
                        name=f"{inst.name} (arriving)",
                        memory_mib=inst.memory_mib,
                        vcpus=inst.vcpus,
                        host=target,
                        group=inst.group,
                    )
                )
        return scheduler.Snapshot(hosts=tuple(hosts), instances=tuple(instances))

    def storage_plan(self, snode: str) -> scheduler.Plan:
        """Instances that would lose their last storage path without `snode`, and where to."""
        return scheduler.plan_storage_maintenance(self.snapshot(), snode, self.hv.policy)

    def request_for(self, instance: Instance, host: str | None = None) -> scheduler.Request:
        return scheduler.Request(
            name=instance.name,
            memory_mib=instance.memory_mib,
            vcpus=instance.vcpus,
            group=instance.group,
            storage=self._storage_of(instance),
            host=host,
            volumes=(instance.volume,) if instance.volume else (),
        )

    def place(
        self, instance: Instance, host: str | None = None, source: str | None = None
    ) -> scheduler.Placement:
        snapshot = self.snapshot()
        if host is not None and host not in {h.name for h in snapshot.hosts}:
            raise JobError(f"no hardware node named {host!r} (registered, role hnode)")
        return explain(
            ledger_from(snapshot),
            self.request_for(instance, host),
            scheduler.Policy.parse(self.hv.policy),
            source=source,
        )

    @contextlib.asynccontextmanager
    async def acting_on(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self.busy.add(name)
            try:
                yield
            finally:
                self.busy.discard(name)

    # -- domain definitions --------------------------------------------------------------

    def spec(self, instance: Instance) -> InstanceSpec:
        profile = self.store.get_profile(instance.profile) or default_profile(instance.profile)
        kernel = initrd = None
        if profile.image is not None:
            images = Path(self.config.boot.image_dir) / profile.image
            kernel, initrd = str(images / "kernel"), str(images / "initrd")
        boot = instance.boot or self.hv.boot
        network_boot = kernel is None and self.hv.flavour == "xen" and boot == "hvm"
        if kernel is None and not network_boot:
            raise JobError(
                f"profile {instance.profile} has no image for {instance.name} to boot: "
                f"`cloudctl profile set {instance.profile} --image IMAGE`"
                + (" (or --boot hvm to boot from the network)" if self.hv.flavour == "xen" else "")
            )
        disks: tuple[Disk, ...] = ()
        if instance.volume is not None:
            # Shared: after a migration or failover another node opens the same volume.
            disks = (Disk(self.volume_device(instance.volume), self.disk_target(), shared=True),)
        try:
            return InstanceSpec(
                name=instance.name,
                uuid=instance.uuid,
                memory_mib=instance.memory_mib,
                vcpus=instance.vcpus,
                flavour=self.hv.flavour,
                boot="hvm" if self.hv.flavour == "qemu" else boot,
                kernel=kernel,
                initrd=initrd,
                cmdline="" if network_boot else self._cmdline(profile.cmdline, instance),
                network_boot=network_boot,
                nics=(Nic(self.hv.bridge, instance.mac),),
                disks=disks,
                metadata={
                    "instance": instance.name,
                    "profile": instance.profile,
                    "group": instance.group or "",
                },
            )
        except DomainSpecError as exc:
            raise JobError(f"cannot define {instance.name}: {exc}") from None

    def volume_device(self, name: str) -> str:
        """The block device a hardware node gives the instance: its md mirror or AoE leg."""
        volume = self.store.get_volume(name)
        device = volume.legs[0].device if volume is not None and volume.legs else ""
        template = self.hv.volume_device
        if template is not None:
            return template.replace("{volume}", name).replace("{device}", device)
        if volume is not None and not volume.mirrored and device:
            return f"/dev/etherd/{device}"
        return f"/dev/md/{name}"

    def disk_target(self) -> str:
        return "xvda" if self.hv.flavour == "xen" else "vda"

    def _cmdline(self, template: str, instance: Instance) -> str:
        net = self.config.network
        values = {
            "name": instance.name,
            "mac": instance.mac,
            "ip": "dhcp",  # instances take their address from DHCP, not from the inventory
            "server": str(net.server),
            "domain": net.domain,
            "gateway": str(net.gateway),
            "netmask": str(net.subnet.netmask),
            "role": "instance",
            "storage": "",  # the volume is the guest's disk; md runs in dom0
        }
        try:
            return template.format_map(values)
        except (KeyError, ValueError) as exc:
            raise JobError(f"profile {instance.profile}'s command line: {exc}") from None

    # -- libvirt operations --------------------------------------------------------------

    async def define_and_start(self, instance: Instance, node: str) -> None:
        xml = domain_xml(self.spec(instance))
        link = self.link(node)

        def run(conn: libvirt.virConnect) -> None:
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
                raise

        await link.call(run)
        deadline = time.monotonic() + START_WAIT_SECONDS
        while not await link.call(lambda c: bool(c.lookupByName(instance.name).isActive())):
            if time.monotonic() > deadline:
                raise HypervisorError(f"{node}: {instance.name} did not start within 60 s")
            await asyncio.sleep(0.2)

    async def remove_domain(self, instance: Instance, node: str, *, force: bool) -> None:
        """Power the domain off (politely unless `force`) and undefine it on `node`."""
        link = self.link(node)
        timeout = 0.0 if force else 120.0

        def ask(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByName(instance.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            if dom.isActive():
                if force:
                    dom.destroy()
                else:
                    dom.shutdown()
                    return True
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
            return False

        deadline = time.monotonic() + timeout
        while await link.call(ask):
            if time.monotonic() > deadline:
                raise JobError(
                    f"{instance.name} did not shut down within {timeout:.0f} s "
                    "(the guest ignores the power button?): use `instance stop --force`"
                )
            await asyncio.sleep(1.0)

    async def attach_volume(self, instance: Instance, node: str, attach: bool) -> None:
        """Let `node` use (or stop using) the instance's volume: its exports' MAC list."""
        if instance.volume is None:
            return
        volume = self.store.get_volume(instance.volume)
        if volume is None or (node in volume.assigned) == attach:
            return
        await self.store.assign_volume(instance.volume, node, attach, SYSTEM)

    async def boot_on(
        self, instance: Instance, node: str, change: Change, action: str = "instance.state"
    ) -> None:
        """Record `instance` starting on `node`, give the node its volume and start the domain.
        JobError if it does not come up: then it is recorded failed, the volume taken back."""
        name = instance.name
        await self.store.set_instance(name, state=InstanceState.STARTING, node=node, change=change)
        try:
            await self.attach_volume(instance, node, True)
            await self.define_and_start(instance, node)
        except (HypervisorError, JobError) as exc:
            await self.store.set_instance(
                name, state=InstanceState.FAILED, node=None, change=change
            )
            with contextlib.suppress(Exception):
                await self.attach_volume(instance, node, False)
            raise JobError(f"{name} did not start on {node}: {exc}") from None
        await self.store.set_instance(
            name, state=InstanceState.RUNNING, node=node, change=change, action=action
        )

    # -- jobs ----------------------------------------------------------------------------

    async def start_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        name = params["name"]
        async with self.acting_on(name):
            instance = self._get(name)
            if instance.state is InstanceState.RUNNING:
                return {"name": name, "node": instance.node, "already": True}
            if instance.state in PLACED and instance.state is not InstanceState.STARTING:
                raise JobError(f"{name} is {instance.state.value} on {instance.node}")
            placement = self.place(instance, params.get("node"))
            if placement.host is None:
                await self._set(instance, InstanceState.STOPPED, None, ctx)
                raise JobError(f"no hardware node can run {name}: {placement.reason}")
            node = placement.host
            await ctx.progress(f"placing {name} on {node} ({placement.reason})")
            await self.boot_on(instance, node, Change(ctx.job.actor, ctx.job.reason))
            await ctx.progress(f"{name} runs on {node}")
            return {"name": name, "node": node}

    async def stop_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        name, force = params["name"], params.get("force", False)
        async with self.acting_on(name):
            instance = self._get(name)
            if instance.node is None or instance.state is InstanceState.STOPPED:
                await self._set(instance, InstanceState.STOPPED, None, ctx)
                return {"name": name, "already": True}
            node = instance.node
            await ctx.progress(f"{'powering off' if force else 'shutting down'} {name} on {node}")
            await self._set(instance, InstanceState.STOPPING, node, ctx)
            try:
                await self.remove_domain(instance, node, force=force)
            except HypervisorError as exc:
                await self._set(instance, InstanceState.FAILED, node, ctx)
                raise JobError(f"cannot stop {name} on {node}: {exc}") from None
            except JobError:
                await self._set(instance, InstanceState.RUNNING, node, ctx)
                raise
            await self.attach_volume(instance, node, False)
            await self._set(instance, InstanceState.STOPPED, None, ctx)
            return {"name": name, "node": node}

    async def reboot_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        name = params["name"]
        async with self.acting_on(name):
            instance = self._get(name)
            if instance.state is not InstanceState.RUNNING or instance.node is None:
                raise JobError(f"{name} is {instance.state.value}, not running")
            try:
                await self.link(instance.node).call(lambda c: c.lookupByName(name).reboot(0))
            except HypervisorError as exc:
                raise JobError(f"cannot reboot {name}: {exc}") from None
            await ctx.progress(f"{name} reboots on {instance.node}")
            return {"name": name, "node": instance.node}

    async def destroy_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        name = params["name"]
        async with self.acting_on(name):
            instance = self._get(name)
            if instance.node is not None and instance.state is not InstanceState.STOPPED:
                try:
                    await self.remove_domain(instance, instance.node, force=True)
                except HypervisorError as exc:
                    raise JobError(
                        f"cannot reach {instance.node} to power {name} off ({exc}); it may still "
                        "run there, so its record is kept: retry when the node answers"
                    ) from None
                await self.attach_volume(instance, instance.node, False)
                await ctx.progress(f"{name} powered off and undefined on {instance.node}")
            await self.store.remove_instance(name, Change(ctx.job.actor, ctx.job.reason))
            return {"name": name, "node": instance.node}

    def _get(self, name: str) -> Instance:
        instance = self.store.get_instance(name)
        if instance is None:
            raise JobError(f"no instance named {name!r}")
        return instance

    async def _set(
        self,
        instance: Instance,
        state: InstanceState,
        node: str | None,
        ctx: JobContext | None,
        action: str = "instance.state",
    ) -> Instance:
        change = Change(ctx.job.actor, ctx.job.reason) if ctx is not None else SYSTEM
        return await self.store.set_instance(
            instance.name, state=state, node=node, change=change, action=action
        )
