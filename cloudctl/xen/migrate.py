"""Live migration of one domain from one hardware node's libvirt to another's.

The source libvirt drives it (peer to peer) over an explicit migration URI; we watch its job
statistics for progress, and abort it when it takes too long or the job is cancelled, so the
instance keeps running on the source. Success is what the destination reports, not what the
migrate call returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import libvirt

from cloudctl.xen.hosts import HostLink, HypervisorError

FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)
POLL_SECONDS = 0.5


class MigrationError(Exception):
    """The migration did not happen; the message says why and where the instance runs."""


@dataclass(frozen=True)
class MigrationSettings:
    uri: str  # where the destination's hypervisor receives memory, e.g. tcp://10.0.0.5:49152
    max_downtime_ms: int
    bandwidth_mib: int  # 0: unlimited
    timeout: float


@dataclass(frozen=True)
class MigrationProgress:
    elapsed: float
    data_total: int
    data_remaining: int
    rate_bps: int  # bytes/s of memory being copied

    @property
    def fraction(self) -> float:
        if self.data_total <= 0:
            return 0.0
        return max(0.0, min(1.0, 1 - self.data_remaining / self.data_total))


def progress_line(p: MigrationProgress, width: int = 30) -> str:
    """`[#########.....] 62% 41 MiB left at 120 MiB/s` for job progress."""
    done = round(p.fraction * width)
    return (
        f"[{'#' * done}{'.' * (width - done)}] {p.fraction * 100:3.0f}% "
        f"{p.data_remaining / 2**20:.0f} MiB left at {p.rate_bps / 2**20:.0f} MiB/s "
        f"({p.elapsed:.1f} s)"
    )


def _stats(conn: libvirt.virConnect, domain: str) -> dict:
    try:
        return conn.lookupByName(domain).jobStats()
    except libvirt.libvirtError:
        return {}  # no job yet, or it has just ended


async def live_migrate(
    source: HostLink,
    target: HostLink,
    domain: str,
    settings: MigrationSettings,
    report: Callable[[MigrationProgress], Awaitable[None]],
) -> float:
    """Move `domain` live; return the seconds it took. MigrationError leaves it on `source`."""
    params: dict = {libvirt.VIR_MIGRATE_PARAM_URI: settings.uri}
    if settings.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = settings.bandwidth_mib

    def prepare(conn: libvirt.virConnect) -> None:
        dom = conn.lookupByName(domain)
        if not dom.isActive():
            raise HypervisorError(f"{source.name}: domain {domain} is not running")
        with contextlib.suppress(libvirt.libvirtError):
            # Not every driver takes this before a job exists; then it stays the default.
            dom.migrateSetMaxDowntime(settings.max_downtime_ms, 0)

    def migrate(conn: libvirt.virConnect) -> None:
        conn.lookupByName(domain).migrateToURI3(target.uri, params, FLAGS)

    try:
        await source.call(prepare)
    except HypervisorError as exc:
        raise MigrationError(f"cannot start: {exc}") from None
    started = time.monotonic()
    # The migrate call blocks until done; its own timeout is ours plus time to abort.
    call = asyncio.create_task(source.call(migrate, timeout=settings.timeout + source.call_timeout))
    try:
        while not call.done():
            elapsed = time.monotonic() - started
            if elapsed > settings.timeout:
                await _abort(source, domain, call)
                raise MigrationError(
                    f"did not finish within {settings.timeout:.0f} s: aborted; "
                    f"{domain} keeps running on {source.name}"
                )
            await asyncio.wait({call}, timeout=POLL_SECONDS)
            if call.done():
                break
            stats = await _quiet(source.call(lambda c: _stats(c, domain), timeout=5))
            if stats:
                await report(
                    MigrationProgress(
                        elapsed=time.monotonic() - started,
                        data_total=int(stats.get("data_total", 0)),
                        data_remaining=int(stats.get("data_remaining", 0)),
                        rate_bps=int(stats.get("memory_bps", 0)),
                    )
                )
        call.result()
    except asyncio.CancelledError:
        await _abort(source, domain, call)
        raise
    except HypervisorError as exc:
        raise MigrationError(f"{exc}; {domain} keeps running on {source.name}") from None
    seconds = time.monotonic() - started
    await _confirm(source, target, domain)
    return seconds


async def _quiet(awaitable: Awaitable[dict]) -> dict:
    try:
        return await awaitable
    except HypervisorError:
        return {}


async def _abort(source: HostLink, domain: str, call: asyncio.Task) -> None:
    with contextlib.suppress(HypervisorError):
        await source.call(lambda c: c.lookupByName(domain).abortJob(), timeout=10)
    # The migrate call returns with "operation aborted" once the source has rolled back.
    with contextlib.suppress(HypervisorError, asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(call), source.call_timeout)


async def _confirm(source: HostLink, target: HostLink, domain: str) -> None:
    def running(conn: libvirt.virConnect) -> bool:
        state, _ = conn.lookupByName(domain).state()
        return state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED)

    try:
        if await target.call(running):
            return
    except HypervisorError as exc:
        raise MigrationError(
            f"the migration returned but {target.name} does not confirm: {exc}"
        ) from None
    raise MigrationError(f"the migration returned but {domain} is not running on {target.name}")
