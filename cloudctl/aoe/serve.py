"""`cloudctl storage serve`: a storage node's process, the agent and the AoE target together.

The agent pulls the node's legs from cloudctld and hands the exported ones to the target; the
target keeps serving what it has if cloudctld goes away. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from cloudctl.aoe.agent import ExportPlan, StorageAgent
from cloudctl.aoe.target import AoeTarget, ExportSpec
from cloudctl.cli.client import ApiClient

log = logging.getLogger(__name__)


def export_specs(plans: list[ExportPlan]) -> list[ExportSpec]:
    # The config string names the volume, so `cloudctl aoe probe` and initiators can tell
    # exports apart by more than their shelf.slot.
    return [
        ExportSpec(p.shelf, p.slot, p.path, p.allowed_macs, config_string=p.volume.encode())
        for p in plans
    ]


async def serve(
    client: ApiClient, snode: str, interfaces: list[str], volume_dir: Path, interval: float
) -> None:
    target = AoeTarget([], interfaces)
    await target.start()

    async def apply(plans: list[ExportPlan]) -> None:
        await target.update_exports(export_specs(plans))

    agent = StorageAgent(
        volume_dir,
        lambda: client.request("GET", f"/v1/storage/{snode}/exports"),
        lambda devices: client.request("POST", f"/v1/storage/{snode}/report", {"exports": devices}),
        apply,
        interval=interval,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving AoE for %s on %s from %s", snode, ", ".join(interfaces), volume_dir)
    try:
        await agent.run(stop)
    finally:
        await target.close()
        log.info("stopped")
