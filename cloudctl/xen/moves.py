"""Moving instances between hardware nodes: live migration, node drain, and failover.

Each is a job. Moves are planned by the scheduler before anything moves; the store records an
instance's new node only after the destination reports it running, and a failed or aborted
migration leaves the instance running (and recorded) on its source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from cloudctl import scheduler
from cloudctl.jobs import JobContext, JobError
from cloudctl.scheduler.evacuation import plan_evacuation
from cloudctl.state.models import InstanceState
from cloudctl.state.store import Change
from cloudctl.xen.hosts import HypervisorError, expand
from cloudctl.xen.lifecycle import Hypervisors
from cloudctl.xen.migrate import (
    MigrationError,
    MigrationProgress,
    MigrationSettings,
    live_migrate,
    progress_line,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress lines of one migration


class Mover:
    def __init__(self, hypervisors: Hypervisors) -> None:
        self.hv = hypervisors

    def settings(self, target: str) -> MigrationSettings:
        node = self.hv.store.get_node(target)
        assert node is not None
        config = self.hv.hv
        return MigrationSettings(
            uri=expand(
                config.migration_uri,
                name=node.name,
                ip=str(node.ip) if node.ip else None,
                mac=node.mac,
            ),
            max_downtime_ms=config.max_downtime_ms,
            bandwidth_mib=config.bandwidth_mib,
            timeout=float(config.migration_timeout),
        )

    def check_compatible(self, source: str, target: str) -> None:
        src, dst = self.hv.link(source), self.hv.link(target)
        if src.info is None or dst.info is None:
            raise JobError(f"{source} or {target} has not reported its hypervisor yet")
        if src.info.hypervisor != dst.info.hypervisor:
            raise JobError(
                f"{source} runs {src.info.hypervisor} but {target} runs {dst.info.hypervisor}"
            )
        if dst.info.version < src.info.version:
            raise JobError(
                f"{target}'s hypervisor ({_version(dst.info.version)}) is older than "
                f"{source}'s ({_version(src.info.version)}): live migration needs the same or newer"
            )

    async def migrate(self, ctx: JobContext, name: str, to: str | None) -> dict[str, Any]:
        """Pre-check, migrate live, then record the new node. Caller holds no lock."""
        async with self.hv.acting_on(name):
            instance = self.hv.store.get_instance(name)
            if instance is None:
                raise JobError(f"no instance named {name!r}")
            if instance.state is not InstanceState.RUNNING or instance.node is None:
                raise JobError(f"{name} is {instance.state.value}; only running instances migrate")
            source = instance.node
            if to == source:
                raise JobError(f"{name} already runs on {source}")
            placement = self.hv.place(instance, to, source=source)
            if placement.host is None:
                raise JobError(f"cannot migrate {name}: {placement.reason}")
            target = placement.host
            self.check_compatible(source, target)
            await ctx.progress(f"migrating {name} from {source} to {target} ({placement.reason})")
            self.hv.arriving[name] = target
            change = Change(ctx.job.actor, ctx.job.reason)
            try:
                await self.hv.attach_volume(instance, target, True)
                await self.hv.store.set_instance(
                    name, state=InstanceState.MIGRATING, node=source, change=change
                )
                seconds = await live_migrate(
                    self.hv.link(source),
                    self.hv.link(target),
                    name,
                    self.settings(target),
                    self._reporter(ctx),
                )
            except (MigrationError, HypervisorError) as exc:
                await self.hv.store.set_instance(
                    name, state=InstanceState.RUNNING, node=source, change=change
                )
                await self.hv.attach_volume(instance, target, False)
                raise JobError(f"migration of {name} to {target} failed: {exc}") from None
            except asyncio.CancelledError:
                await self.hv.store.set_instance(
                    name, state=InstanceState.RUNNING, node=source, change=change
                )
                raise
            finally:
                self.hv.arriving.pop(name, None)
            await self.hv.store.set_instance(
                name,
                state=InstanceState.RUNNING,
                node=target,
                change=change,
                action="instance.migrate",
            )
            await self.hv.attach_volume(instance, source, False)
            await ctx.progress(f"{name} runs on {target} ({seconds:.1f} s)")
            return {"name": name, "source": source, "target": target, "seconds": seconds}

    def _reporter(self, ctx: JobContext):
        last = [0.0]

        async def report(progress: MigrationProgress) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                await ctx.progress(progress_line(progress))

        return report

    async def migrate_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self.migrate(ctx, params["name"], params.get("to"))

    async def drain_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        """Live-migrate everything off a node already marked drained, a few at a time."""
        node = params["node"]
        snapshot = self.hv.snapshot()
        plan = plan_evacuation(snapshot, node, self.hv.hv.policy)
        if not plan.moves and not plan.stuck:
            await ctx.progress(f"{node} runs no instances")
            return {"node": node, "moved": [], "failed": []}
        if plan.stuck:
            lines = "; ".join(f"{name}: {why}" for name, why in plan.stuck)
            raise JobError(
                f"cannot empty {node}, nothing was moved: {lines} "
                "(add capacity or stop those instances; the node stays drained)"
            )
        await ctx.progress(f"plan: {', '.join(f'{m.instance} -> {m.target}' for m in plan.moves)}")
        limit = asyncio.Semaphore(self.hv.hv.drain_parallel)
        failed: list[str] = []
        moved: list[str] = []

        async def one(move: scheduler.Move) -> None:
            async with limit:
                try:
                    await self.migrate(ctx, move.instance, move.target)
                    moved.append(move.instance)
                except JobError as exc:
                    failed.append(f"{move.instance}: {exc}")
                    await ctx.progress(f"failed: {exc}")

        await asyncio.gather(*(one(move) for move in plan.moves))
        if failed:
            raise JobError(f"{len(failed)} of {len(plan.moves)} moves failed: {'; '.join(failed)}")
        return {"node": node, "moved": sorted(moved), "failed": []}

    async def failover_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        """Restart a dead node's instances elsewhere, from their shared storage."""
        node = params["node"]
        link = self.hv.link(node)
        try:
            await link.refresh()
        except HypervisorError:
            pass
        else:
            if not params.get("force"):
                raise JobError(
                    f"{node}'s libvirt answers: it is not dead. Drain it instead "
                    "(or use --force if it is broken but answering)"
                )
        change = Change(ctx.job.actor, ctx.job.reason)
        victims = [
            i
            for i in self.hv.store.list_instances(node=node)
            if i.state in (InstanceState.RUNNING, InstanceState.LOST, InstanceState.STARTING)
        ]
        restarted, stuck = [], []
        for instance in victims:
            async with self.hv.acting_on(instance.name):
                instance = await self.hv.store.set_instance(
                    instance.name, state=InstanceState.LOST, node=None, change=change
                )
                placement = self.hv.place(instance)
                if placement.host is None:
                    stuck.append(f"{instance.name}: {placement.reason}")
                    await ctx.progress(f"{instance.name} cannot restart: {placement.reason}")
                    continue
                target = placement.host
                await ctx.progress(f"restarting {instance.name} on {target}")
                await self.hv.attach_volume(instance, node, False)  # the dead node lets go
                try:
                    await self.hv.boot_on(instance, target, change, action="instance.failover")
                except JobError as exc:
                    stuck.append(str(exc))
                    continue
                restarted.append(instance.name)
        if stuck:
            raise JobError(
                f"restarted {len(restarted)} of {len(victims)}; not restarted: {'; '.join(stuck)}"
            )
        return {"node": node, "restarted": restarted}


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
