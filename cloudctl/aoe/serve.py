"""`cloudctl storage serve`: a storage node's process, the agent and the AoE target together.

The agent pulls the node's legs from cloudctld and hands the exported ones to the target; the
target keeps serving what it has if cloudctld goes away. It reports the exports, and the node's
DRBD state where DRBD is loaded. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudctl.aoe.agent import ExportPlan, StorageAgent
from cloudctl.aoe.drbdreport import DrbdReader, statuses_from_json
from cloudctl.aoe.target import AoeTarget, AoeTargetError, ExportSpec
from cloudctl.cli.client import ApiClient

log = logging.getLogger(__name__)


def export_specs(plans: list[ExportPlan]) -> list[ExportSpec]:
    # The config string names the volume, so `cloudctl aoe probe` and initiators can tell
    # exports apart by more than their shelf.slot.
    return [
        ExportSpec(p.shelf, p.slot, p.path, p.allowed_macs, config_string=p.volume.encode())
        for p in plans
    ]


async def start_target(interfaces: list[str]) -> AoeTarget:
    target = AoeTarget([], interfaces)
    await target.start()
    return target


async def run_agent(
    target: AoeTarget,
    fetch: Callable[[], dict[str, Any]],
    report: Callable[[dict[str, Any]], Any],
    volume_dir: Path | Any,
    interval: float,
    stop: asyncio.Event,
    read_drbd: Callable[[], Any] | None = None,
) -> None:
    """Feed `target` from the inventory until `stop`; then close it."""

    async def apply(plans: list[ExportPlan]) -> None:
        await target.update_exports(export_specs(plans))

    agent = StorageAgent(volume_dir, fetch, report, apply, interval=interval, read_drbd=read_drbd)
    try:
        await agent.run(stop)
    finally:
        await target.close()


class LocalStorageNode:
    """cloudctld as its own storage node: the agent reads the coordinator on the event loop
    instead of calling the API, and the target runs in cloudctld's process."""

    def __init__(
        self, coordinator: Any, snode: str, interfaces: list[str], volume_dir: Path | Any
    ) -> None:
        self.coordinator = coordinator
        self.snode = snode
        self.interfaces = interfaces
        self.volume_dir = volume_dir
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Open the AoE sockets now, so a wrong interface stops cloudctld at startup."""
        loop = asyncio.get_running_loop()
        if not isinstance(self.volume_dir, Path):
            try:
                await asyncio.to_thread(self.volume_dir.prepare)
            except OSError as exc:
                raise AoeTargetError(f"storage.volume_group: {exc}") from None
        try:
            target = await start_target(self.interfaces)
        except (AoeTargetError, OSError) as exc:
            raise AoeTargetError(f"storage.serve_interfaces: {exc}") from None

        async def exports() -> dict[str, Any]:
            return self.coordinator.exports_json(self.snode)

        async def report(body: dict[str, Any]) -> None:
            self.coordinator.report(self.snode, frozenset(body["exports"]))
            if "drbd" in body:
                drbd = body["drbd"]
                resources = None if drbd is None else statuses_from_json(drbd)
                self.coordinator.report_drbd(self.snode, resources)

        def fetch() -> dict[str, Any]:  # called on the agent's thread
            return asyncio.run_coroutine_threadsafe(exports(), loop).result(timeout=30)

        def send(body: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(report(body), loop).result(timeout=30)

        self._task = asyncio.create_task(
            run_agent(target, fetch, send, self.volume_dir, 1.0, self._stop, DrbdReader()),
            name=f"storage-{self.snode}",
        )
        log.info("serving AoE for %s on %s", self.snode, ", ".join(self.interfaces))

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def serve(
    client: ApiClient,
    snode: str,
    interfaces: list[str],
    volume_dir: Path | Any,
    interval: float,
) -> None:
    """`volume_dir`: a directory of leg files, or an LvmVolumes (a volume group)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving AoE for %s on %s from %s", snode, ", ".join(interfaces), volume_dir)
    await run_agent(
        await start_target(interfaces),
        lambda: client.request("GET", f"/v1/storage/{snode}/exports"),
        lambda body: client.request("POST", f"/v1/storage/{snode}/report", body),
        volume_dir,
        interval,
        stop,
        DrbdReader(),
    )
    log.info("stopped")
