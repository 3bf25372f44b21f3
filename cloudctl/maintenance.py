"""Storage maintenance and mirror tracking: what storage nodes' agents last exported (and saw
of their DRBD devices) and what nodes' mirror agents last saw of their md arrays, and the
maintenance job that waits on both.

Taking a storage node out: its legs are marked failed; nodes running a mirror agent fail and
remove the leg from their arrays while it is still exported (no I/O waits for the AoE timeout);
then the storage node stops exporting. Bringing it back: it exports again, the mirror agents
re-add the legs, and the job follows the resync until every mirror is clean.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from cloudctl.aoe.drbd import DrbdStatus
from cloudctl.jobs import JobContext, JobError, JobKind
from cloudctl.state import StateStore
from cloudctl.state.models import ExportRecord, Volume
from cloudctl.state.store import Change

AGENT_WAIT_SECONDS = 60.0
MIRROR_REPORT_FRESH_SECONDS = 30.0  # older reports say nothing about an array now
RESYNC_POLL_SECONDS = 1.0


class StorageCoordinator:
    """What storage and mirror agents last reported, so jobs can wait for them to act."""

    def __init__(self, store: StateStore, image_url: Any = None) -> None:
        self.store = store
        # image name -> URL a storage node downloads the image's disk from (HTTP boot server)
        self.image_url = image_url or (lambda image: None)
        self.reports: dict[str, tuple[float, frozenset[str]]] = {}
        # node -> (when, {volume: array report}) from `cloudctl storage mirror-agent`
        self.mirrors: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        # storage node -> (when, its DRBD devices) from `cloudctl storage serve`, for status only
        self.drbd: dict[str, tuple[float, tuple[DrbdStatus, ...]]] = {}
        self._changed = asyncio.Event()
        # Set by the daemon: instances move off a storage node's paths before it goes.
        self.hypervisors: Any = None
        self.mover: Any = None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def report(self, snode: str, devices: frozenset[str]) -> None:
        self.reports[snode] = (time.time(), devices)
        self._notify()

    def report_drbd(self, snode: str, devices: tuple[DrbdStatus, ...] | None) -> None:
        """The DRBD devices `snode` runs now; None: DRBD is not loaded there (any more)."""
        if devices is None:
            self.drbd.pop(snode, None)
        else:
            self.drbd[snode] = (time.time(), devices)

    async def mirror_report(self, node: str, arrays: list[dict[str, Any]]) -> None:
        """A node's arrays; a resyncing leg whose array is clean there is active again."""
        self.mirrors[node] = (time.time(), {a["volume"]: a for a in arrays})
        for array in arrays:
            if not array.get("clean"):
                continue
            volume = self.store.get_volume(array["volume"])
            if volume is None or node not in volume.assigned:
                continue
            for leg in volume.legs:
                if leg.state == "resyncing" and array["members"].get(leg.device) == "present":
                    await self.store.set_leg_state(volume.name, leg.snode, "active")
        self._notify()

    def served_view(self, volume: Volume) -> dict[str, Any]:
        """A volume as a mirror agent should see it: a leg its storage node does not export
        right now is "unexported" (state failed stays), so nobody re-adds a leg too early."""
        data = volume.to_json()
        for leg in data["legs"]:
            served = self.reports.get(leg["snode"], (0.0, frozenset()))[1]
            if leg["state"] != "failed" and leg["device"] not in served:
                leg["state"] = "unexported"
        return data

    def arrays_of(self, volume: str) -> dict[str, dict[str, Any]]:
        """Fresh reports of `volume`'s array, by node."""
        now = time.time()
        found = {}
        for node, (at, arrays) in self.mirrors.items():
            if now - at <= MIRROR_REPORT_FRESH_SECONDS and arrays.get(volume, {}).get("array"):
                found[node] = arrays[volume]
        return found

    def still_attached(self, volume: str, device: str) -> bool:
        """Whether a node's array still uses this leg: its export must stay until it lets go."""
        return any(
            array["members"].get(device) == "present" for array in self.arrays_of(volume).values()
        )

    def exports(self, snode: str) -> list[ExportRecord]:
        """What `snode` must export now. In maintenance a leg stays exported while a node's
        array still holds it, so that node's I/O never waits for the AoE timeout."""
        records = self.store.exports_for(snode)
        if snode not in self.store.storage_in_maintenance():
            return records
        return [
            dataclasses.replace(r, exported=True)
            if not r.exported
            and r.allowed_macs
            and self.still_attached(r.volume, f"e{r.shelf}.{r.slot}")
            else r
            for r in records
        ]

    async def _wait_for(self, check, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not check():
            event = self._changed
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False
        return True

    async def wait_until(self, snode: str, wanted: frozenset[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            event = self._changed
            if snode in self.reports and self.reports[snode][1] == wanted:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return False

    def exports_json(self, snode: str) -> dict[str, Any]:
        """What a storage node's agent pulls: its legs, and where to fill new ones from."""
        exports = []
        for record in self.exports(snode):
            data = record.to_json()
            data["image_url"] = self.image_url(record.image) if record.image else None
            exports.append(data)
        return {
            "snode": snode,
            "in_maintenance": snode in self.store.storage_in_maintenance(),
            "exports": exports,
        }

    def wanted(self, snode: str) -> frozenset[str]:
        return frozenset(f"e{e.shelf}.{e.slot}" for e in self.exports(snode) if e.exported)

    def _attached_legs(self, snode: str, volumes: list[str]) -> list[str]:
        held = []
        for name in volumes:
            volume = self.store.get_volume(name)
            for leg in volume.legs if volume is not None else ():
                if leg.snode == snode and self.still_attached(name, leg.device):
                    held.append(f"{name} ({leg.device})")
        return held

    async def _detach(self, ctx: JobContext, snode: str, volumes: list[str], timeout: float):
        held = self._attached_legs(snode, volumes)
        if not held:
            return
        await ctx.progress(f"waiting for nodes' mirror agents to drop {', '.join(held)}")
        if not await self._wait_for(lambda: not self._attached_legs(snode, volumes), timeout):
            held = ", ".join(self._attached_legs(snode, volumes))
            await ctx.progress(
                f"still held after {timeout:.0f} s: {held}; stopping the exports anyway "
                "(md fails those legs after the AoE timeout; no acknowledged write is lost)"
            )
            # Stop treating old reports as attachments, or the exports would never stop.
            for node in list(self.mirrors):
                self.mirrors[node] = (0.0, self.mirrors[node][1])

    def _resyncing(self, snode: str, volumes: list[str]) -> dict[str, Any]:
        """Volumes whose leg on `snode` still resyncs -> their arrays' reports by node."""
        left = {}
        for name in volumes:
            volume = self.store.get_volume(name)
            if volume is None:
                continue
            if any(leg.snode == snode and leg.state == "resyncing" for leg in volume.legs):
                left[name] = self.arrays_of(name)
        return left

    async def _follow_resync(self, ctx: JobContext, snode: str, volumes: list[str]) -> None:
        last_line = ""
        while True:
            left = self._resyncing(snode, volumes)
            if not left:
                return
            for name, arrays in left.items():
                if not arrays:
                    # No node reports this array (unassembled, or no mirror agent there):
                    # nothing to follow; md resyncs from its bitmap when it is assembled.
                    volume = self.store.get_volume(name)
                    for leg in volume.legs if volume is not None else ():
                        if leg.snode == snode and leg.state == "resyncing":
                            await self.store.set_leg_state(name, snode, "active")
                    await ctx.progress(f"{name}: no node reports its array; leg marked active")
            line = "; ".join(
                f"{name}: {_sync_text(arrays)}" for name, arrays in sorted(left.items()) if arrays
            )
            if line and line != last_line:
                await ctx.progress(line)
                last_line = line
            await self._wait_for(lambda: False, RESYNC_POLL_SECONDS)

    async def _move_instances_first(self, ctx: JobContext, snode: str, moves: list) -> list[str]:
        """Live-migrate the instances that would lose their last storage path, then record the
        maintenance (which the store still refuses if a volume would lose its last leg)."""
        for name, target in moves:
            await ctx.progress(f"{name} would lose its last path to its storage: moving it first")
            await self.mover.migrate(ctx, name, target)
        plan = self.hypervisors.storage_plan(snode)
        if plan.moves or plan.stuck:
            unsafe = [m.instance for m in plan.moves] + [name for name, _ in plan.stuck]
            raise JobError(
                f"instances are still unsafe without {snode}: {', '.join(unsafe)}; "
                "nothing was taken out of service"
            )
        return await self.store.start_storage_maintenance(
            snode, Change(ctx.job.actor, ctx.job.reason)
        )

    async def _maintenance_job(self, ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
        snode, entering = params["snode"], params["entering"]
        if params.get("moves"):
            params = {
                **params,
                "volumes": await self._move_instances_first(ctx, snode, params["moves"]),
            }
        if entering:
            await self._detach(ctx, snode, params["volumes"], params["timeout"])
        wanted = self.wanted(snode)
        verb = "stop exporting" if entering else "export again"
        await ctx.progress(
            f"waiting for {snode}'s storage agent to {verb} {len(params['volumes'])} legs"
        )
        if not await self.wait_until(snode, wanted, params["timeout"]):
            raise JobError(
                f"{snode}'s storage agent did not confirm within {params['timeout']:.0f} s "
                f"(is `cloudctl storage serve` running there?); the maintenance state is recorded"
            )
        if entering:
            await ctx.progress(f"{snode} exports nothing now: it may go down")
        else:
            await ctx.progress(f"{snode} exports {len(wanted)} legs again; following the resync")
            await self._follow_resync(ctx, snode, params["volumes"])
            await ctx.progress("every mirror with a leg on it is clean")
        return {"snode": snode, "volumes": params["volumes"], "exports": sorted(wanted)}

    def job_kind(self) -> JobKind:
        return JobKind("storage-maintenance", lambda params: params, self._maintenance_job)


def progress_bar(fraction: float, width: int = 20) -> str:
    done = round(max(0.0, min(1.0, fraction)) * width)
    return f"[{'#' * done}{'.' * (width - done)}]"


def _sync_text(arrays: dict[str, dict[str, Any]]) -> str:
    texts = []
    for node, array in sorted(arrays.items()):
        sync = array.get("sync")
        if sync:
            texts.append(
                f"{sync['action']} {progress_bar(sync['percent'] / 100)} "
                f"{sync['percent']:.1f}% on {node}"
            )
        elif array.get("clean"):
            texts.append(f"clean on {node}")
        else:
            missing = [d for d, state in array["members"].items() if state != "present"]
            texts.append(f"waiting for {', '.join(missing) or 'the leg'} on {node}")
    return ", ".join(texts)
