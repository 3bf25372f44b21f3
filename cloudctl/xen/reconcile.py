"""Keeping the store and the hardware nodes' libvirt in agreement, every poll_interval.

`compare` is pure: the store's instances on one node and the domains that node reports in,
findings out. The poller acts only on findings that are safe to act on (an instance that shut
itself down is recorded as stopped; one that vanished is marked lost) and reports the rest: a
domain running where the store does not expect it is never destroyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cloudctl.state.models import Instance, InstanceState
from cloudctl.xen.hosts import DomainView, HypervisorError
from cloudctl.xen.lifecycle import SYSTEM, Hypervisors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    node: str
    domain: str
    kind: str  # running | stopped | lost | unexpected
    detail: str


def compare(
    node: str,
    expected: Iterable[Instance],
    domains: dict[str, DomainView],
    known: dict[str, Instance],
) -> list[Finding]:
    """What differs between the store (`expected` on `node`, `known` by name) and libvirt."""
    findings = []
    expected_names = set()
    for instance in expected:
        expected_names.add(instance.name)
        dom = domains.get(instance.name)
        if dom is None or dom.uuid != instance.uuid:
            if instance.state is not InstanceState.LOST:
                findings.append(Finding(node, instance.name, "lost", "not defined on the node"))
        elif dom.state == "shutoff" and instance.state is InstanceState.RUNNING:
            findings.append(Finding(node, instance.name, "stopped", "the guest powered off"))
        elif dom.state != "shutoff" and instance.state is InstanceState.LOST:
            findings.append(Finding(node, instance.name, "running", f"found {dom.state} again"))
    for name, dom in sorted(domains.items()):
        if name in expected_names or dom.state == "shutoff":
            continue
        owner = known.get(name)
        if owner is None:
            detail = "not an instance cloudctl knows"
        elif owner.uuid != dom.uuid:
            detail = f"same name as instance {name} but another UUID"
        else:
            detail = f"the store has it {owner.state.value} on {owner.node or 'no node'}"
        findings.append(Finding(node, name, "unexpected", f"{dom.state}: {detail}"))
    return findings


class Reconciler:
    """The poller: refreshes every node, applies safe findings, keeps the rest for display."""

    def __init__(
        self, hypervisors: Hypervisors, *, failover: Callable[[str], object] | None = None
    ) -> None:
        self.hv = hypervisors
        self.failover = failover
        self.unexpected: dict[tuple[str, str], Finding] = {}
        self._task: asyncio.Task | None = None
        self._failing_over: set[str] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.hv.pool.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:
                log.exception("reconciliation failed; trying again next interval")
            await asyncio.sleep(self.hv.hv.poll_interval)

    async def poll(self) -> None:
        nodes = self.hv.hnodes()
        self.hv.pool.forget({n.name for n in nodes})
        await asyncio.gather(*(self._poll_node(n.name) for n in nodes))

    async def _poll_node(self, node: str) -> None:
        link = self.hv.link(node)
        try:
            domains = await link.refresh()
        except HypervisorError:
            await self._unreachable(node, link)
            return
        self._failing_over.discard(node)
        # Index reads only: this node's instances, and the records of the domains it reports.
        store = self.hv.store
        here = store.list_instances(node=node)
        expected = [i for i in here if i.name not in self.hv.busy]
        known = {name: found for name in domains if (found := store.get_instance(name))}
        known.update((i.name, i) for i in here)
        for key in [k for k in self.unexpected if k[0] == node]:
            del self.unexpected[key]
        for finding in compare(node, expected, domains, known):
            if finding.domain in self.hv.busy:
                continue
            await self._apply(finding, known.get(finding.domain))

    async def _apply(self, finding: Finding, instance: Instance | None) -> None:
        if finding.kind == "unexpected":
            if (finding.node, finding.domain) not in self.unexpected:
                log.warning("on %s: domain %s %s", finding.node, finding.domain, finding.detail)
            self.unexpected[(finding.node, finding.domain)] = finding
            return
        assert instance is not None
        state = {
            "lost": InstanceState.LOST,
            "stopped": InstanceState.STOPPED,
            "running": InstanceState.RUNNING,
        }[finding.kind]
        log.warning("instance %s on %s: %s", instance.name, finding.node, finding.detail)
        node = None if state is InstanceState.STOPPED else finding.node
        await self.hv.store.set_instance(
            instance.name, state=state, node=node, change=SYSTEM, action="instance.reconcile"
        )
        if state is InstanceState.STOPPED:
            with contextlib.suppress(Exception):
                await self.hv.remove_domain(instance, finding.node, force=True)
                await self.hv.attach_volume(instance, finding.node, False)

    async def _unreachable(self, node: str, link) -> None:
        for instance in self.hv.store.list_instances(node=node):
            if instance.name in self.hv.busy or instance.state is not InstanceState.RUNNING:
                continue
            await self.hv.store.set_instance(
                instance.name,
                state=InstanceState.LOST,
                node=node,
                change=SYSTEM,
                action="instance.reconcile",
            )
        down_for = time.monotonic() - link.changed_at
        if (
            self.failover is not None
            and self.hv.hv.failover
            and down_for >= self.hv.hv.failover_after
            and node not in self._failing_over
            and self.hv.store.list_instances(node=node)
        ):
            self._failing_over.add(node)
            log.warning("%s unreachable for %.0f s: failing its instances over", node, down_for)
            await self.failover(node)
