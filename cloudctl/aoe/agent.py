"""The storage node's agent: keep volume files and AoE exports in line with the inventory.

Every few seconds it pulls its legs from cloudctld's API, makes sure each leg's file exists
with the right size, hands the exported ones to the AoE target, and reports what it exports.
If the API is unreachable it keeps serving what it serves: a config-node restart must never
take storage away from running machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudctl.aoe.volumes import FileVolumes, VolumeFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportPlan:
    volume: str
    shelf: int
    slot: int
    path: Path
    size: int
    allowed_macs: frozenset[str]

    @property
    def device(self) -> str:
        return f"e{self.shelf}.{self.slot}"


class StorageAgent:
    def __init__(
        self,
        volume_dir: Path | Any,
        fetch: Callable[[], dict[str, Any]],
        report: Callable[[list[str]], Any],
        apply: Callable[[list[ExportPlan]], Awaitable[None]],
        *,
        interval: float = 2.0,
    ) -> None:
        """`fetch`/`report` are blocking API calls (run in a thread); `apply` swaps exports."""
        # Legs as files in a directory, or another backend (lvm.LvmVolumes: a volume group).
        self.volumes = FileVolumes(volume_dir) if isinstance(volume_dir, Path) else volume_dir
        self.fetch = fetch
        self.report = report
        self.apply = apply
        self.interval = interval
        self.exported: list[ExportPlan] = []
        self._seen: set[str] = set()  # volumes this run has seen in a feed

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sync_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    async def sync_once(self) -> bool:
        """One pull-reconcile-report round; False if the API could not be reached."""
        try:
            feed = await asyncio.to_thread(self.fetch)
        except Exception as exc:  # the API's client raises its own error type; any will do
            log.warning(
                "cannot reach cloudctld (%s); keeping the %d current exports",
                exc,
                len(self.exported),
            )
            return False
        plans = await asyncio.to_thread(self._reconcile_files, feed["exports"])
        if plans != self.exported:
            await self.apply(plans)
            self.exported = plans
            log.info("exporting %s", ", ".join(p.device for p in plans) or "nothing")
        try:
            await asyncio.to_thread(self.report, [p.device for p in plans])
        except Exception as exc:
            log.warning("cannot report exports to cloudctld: %s", exc)
        return True

    def _reconcile_files(self, legs: list[dict[str, Any]]) -> list[ExportPlan]:
        self.volumes.prepare()
        current = {leg["volume"] for leg in legs}
        # Only volumes this agent saw and then saw deleted are trashed: a first feed that is
        # empty (a wrong node name, a restored backup) must never throw data away.
        for volume in sorted(self._seen - current):
            aside = self.volumes.remove(volume)
            if aside is not None:
                log.info("volume %s was deleted: moved its data aside to %s", volume, aside)
        self._seen = current
        plans = []
        for leg in legs:
            path = self.volumes.path(leg["volume"])
            origin = leg.get("origin")
            image = None
            if leg.get("image"):
                if not leg.get("image_url"):
                    log.warning(
                        "volume %s starts from image %s, but cloudctld serves no image disks "
                        "(boot.enabled is off): leg not created",
                        leg["volume"],
                        leg["image"],
                    )
                    continue
                image = (leg["image_url"], leg["image_sha256"])
            try:
                created = self.volumes.ensure(leg["volume"], leg["size"], origin, image)
            except VolumeFileError as exc:
                log.warning("volume %s: %s (retrying next round)", leg["volume"], exc)
                continue
            if created:
                log.info(
                    "created %s (%d bytes%s)",
                    path,
                    leg["size"],
                    f", copy of {leg['origin']}"
                    if origin
                    else (f", from image {leg['image']}" if image else ""),
                )
            if leg["exported"]:
                plans.append(
                    ExportPlan(
                        leg["volume"],
                        leg["shelf"],
                        leg["slot"],
                        path,
                        leg["size"],
                        frozenset(leg["allowed_macs"]),
                    )
                )
        return plans
