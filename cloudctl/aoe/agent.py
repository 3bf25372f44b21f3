"""The storage node's agent: keep volume files and AoE exports in line with the inventory.

Every few seconds it pulls its legs from cloudctld's API, makes sure each leg's file exists
with the right size, hands the exported ones to the AoE target, and reports what it exports
(and, on a node running DRBD, its DRBD devices' state).
If the API is unreachable it keeps serving what it serves: a config-node restart must never
take storage away from running machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudctl.aoe.drbd import DrbdStatus
from cloudctl.aoe.drbdreport import status_to_json
from cloudctl.aoe.volumes import FileVolumes, VolumeFileError

log = logging.getLogger(__name__)
_UNREAD = object()  # the DRBD state could not be read this round


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
        report: Callable[[dict[str, Any]], Any],
        apply: Callable[[list[ExportPlan]], Awaitable[None]],
        *,
        interval: float = 2.0,
        read_drbd: Callable[[], Sequence[DrbdStatus] | None] | None = None,
    ) -> None:
        """`fetch`/`report` are blocking API calls (run in a thread); `apply` swaps exports.

        `report` gets the body of POST /v1/storage/SNODE/report. `read_drbd` (blocking, e.g. a
        drbdreport.DrbdReader) gives this node's DRBD devices, or None where DRBD is not loaded.
        """
        # Legs as files in a directory, or another backend (lvm.LvmVolumes: a volume group).
        self.volumes = FileVolumes(volume_dir) if isinstance(volume_dir, Path) else volume_dir
        self.fetch = fetch
        self.report = report
        self.apply = apply
        self.interval = interval
        self.read_drbd = read_drbd
        self.exported: list[ExportPlan] = []
        self._seen: set[str] = set()  # volumes this run has seen in a feed
        self._drbd_error: str | None = None  # the last reading failure, logged once
        self._drbd_reported = False  # whether cloudctld holds DRBD state from this run

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
        body: dict[str, Any] = {"exports": [p.device for p in plans]}
        drbd = await self._drbd_state()
        # A node without DRBD sends what agents always sent; one whose DRBD went away sends
        # null once, so cloudctld forgets its devices. A failed reading sends nothing: cloudctld
        # keeps the last state, with its time.
        if drbd is not _UNREAD and (drbd is not None or self._drbd_reported):
            body["drbd"] = drbd
        try:
            await asyncio.to_thread(self.report, body)
        except Exception as exc:
            log.warning("cannot report exports to cloudctld: %s", exc)
        else:
            if "drbd" in body:
                self._drbd_reported = body["drbd"] is not None
        return True

    async def _drbd_state(self) -> list[dict[str, Any]] | object | None:
        """The DRBD devices as JSON, None without DRBD, _UNREAD if reading failed."""
        if self.read_drbd is None:
            return None
        try:
            devices = await asyncio.to_thread(self.read_drbd)
        except Exception as exc:  # never let DRBD's state stop the exports
            if str(exc) != self._drbd_error:
                log.warning("cannot read DRBD state (exports go on): %s", exc)
                self._drbd_error = str(exc)
            return _UNREAD
        if self._drbd_error is not None:
            log.info("reading DRBD state again")
            self._drbd_error = None
        return None if devices is None else [status_to_json(d) for d in devices]

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
