"""Libvirt connections to hardware nodes: one per node, opened lazily, every call timed.

libvirt calls block. Each runs on a daemon thread of its own, at most `threads` at once per
node, so a node that hangs ties up only its own calls, callers get a HypervisorError after the
timeout instead of waiting, and a hung call never keeps cloudctld from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

log = logging.getLogger(__name__)

T = TypeVar("T")

# virDomainState -> the words cloudctl shows.
DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # idle vCPUs: the guest is up
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


class HypervisorError(Exception):
    """A hardware node's libvirt refused, failed or did not answer; the message says which."""


@dataclass(frozen=True)
class HostInfo:
    memory_mib: int
    vcpus: int
    hypervisor: str  # libvirt's driver type: "Xen", "QEMU", "Test"
    version: int  # the hypervisor's version, libvirt's encoding (major * 1e6 + minor * 1e3)


@dataclass(frozen=True)
class DomainView:
    """One domain as its node's libvirt reports it."""

    name: str
    uuid: str
    state: str
    persistent: bool


_events_lock = threading.Lock()
_events_started = False


def start_libvirt_events() -> None:
    """libvirt's own event loop on a daemon thread: keepalives detect dead connections."""
    global _events_started
    with _events_lock:
        if _events_started:
            return
        # Errors are raised as libvirtError and reported by us; libvirt's default handler
        # would also print each one to stderr.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _events_started = True


async def _in_thread(fn: Callable[[], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def deliver(setter: Callable, value: Any) -> None:
        if not future.done():
            setter(value)
        elif isinstance(value, libvirt.virConnect):
            # Opened after its caller gave up: nobody will use or close it.
            threading.Thread(target=_close_quietly, args=(value,), daemon=True).start()

    def run() -> None:
        try:
            outcome: tuple[Callable, Any] = (future.set_result, fn())
        except BaseException as exc:  # delivered to the caller, whatever it is
            outcome = (future.set_exception, exc)
        # RuntimeError: the loop is gone (cloudctld stopped while this call hung).
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, *outcome)

    threading.Thread(target=run, name="libvirt-call", daemon=True).start()
    return await future


def _message(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip()


class HostLink:
    """One hardware node's libvirt: `call(fn)` runs fn(connection) with a timeout."""

    def __init__(
        self,
        name: str,
        uri: str,
        *,
        connect_timeout: float,
        call_timeout: float,
        threads: int = 8,
    ) -> None:
        self.name = name
        self.uri = uri
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.reachable: bool | None = None  # None: not tried yet
        self.error: str | None = None
        self.info: HostInfo | None = None
        self.domains: dict[str, DomainView] = {}
        self.changed_at = time.monotonic()  # when `reachable` last changed
        self._conn: libvirt.virConnect | None = None
        self._connecting: asyncio.Lock | None = None
        self._slots = threading.BoundedSemaphore(threads)

    def _mark(self, reachable: bool, error: str | None = None) -> None:
        if reachable != self.reachable:
            self.changed_at = time.monotonic()
            if reachable:
                log.info("hardware node %s: libvirt reachable at %s", self.name, self.uri)
            else:
                log.warning("hardware node %s unreachable: %s", self.name, error)
        self.reachable = reachable
        self.error = error

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # close() may block on a dead peer as long as any call; never wait for it.
            threading.Thread(target=_close_quietly, args=(conn,), daemon=True).start()

    async def _run(self, fn: Callable[[], T], timeout: float, what: str) -> T:
        if not self._slots.acquire(blocking=False):
            raise HypervisorError(
                f"{self.name}: too many libvirt calls still hanging; is the node hung?"
            )

        def guarded() -> T:
            try:
                return fn()
            finally:
                self._slots.release()

        try:
            return await asyncio.wait_for(_in_thread(guarded), timeout)
        except TimeoutError:
            self._drop()
            self._mark(False, f"libvirt did not answer {what} within {timeout:.0f} s")
            raise HypervisorError(f"{self.name}: {self.error}") from None

    async def connection(self) -> libvirt.virConnect:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            try:
                conn = await self._run(
                    lambda: libvirt.open(self.uri), self.connect_timeout, "a connection"
                )
            except libvirt.libvirtError as exc:
                self._mark(False, _message(exc))
                raise HypervisorError(
                    f"{self.name}: cannot connect to {self.uri}: {self.error}"
                ) from None
            # Dead peers are noticed within ~20 s, even between our calls; local drivers
            # (test://) have no keepalive.
            with contextlib.suppress(libvirt.libvirtError):
                conn.setKeepAlive(5, 3)
            self._conn = conn
            self._mark(True)
            return conn

    async def call(
        self, fn: Callable[[libvirt.virConnect], T], *, timeout: float | None = None
    ) -> T:
        """Run fn(connection) on its own thread; HypervisorError if it fails or takes too long."""
        conn = await self.connection()
        try:
            return await self._run(lambda: fn(conn), timeout or self.call_timeout, "a call")
        except libvirt.libvirtError as exc:
            if not _alive(conn):
                self._drop()
                self._mark(False, f"connection lost: {_message(exc)}")
            raise HypervisorError(f"{self.name}: {_message(exc)}") from None

    async def refresh(self) -> dict[str, DomainView]:
        """Read the node's capacity and domains; marks it unreachable if that fails."""

        def read(conn: libvirt.virConnect) -> tuple[HostInfo, dict[str, DomainView]]:
            _model, memory_mib, cpus, *_ = conn.getInfo()
            info = HostInfo(memory_mib, cpus, conn.getType(), conn.getVersion())
            domains = {}
            for dom in conn.listAllDomains():
                state, _reason = dom.state()
                domains[dom.name()] = DomainView(
                    dom.name(),
                    dom.UUIDString(),
                    DOMAIN_STATES.get(state, "unknown"),
                    bool(dom.isPersistent()),
                )
            return info, domains

        self.info, self.domains = await self.call(read)
        return self.domains

    def close(self) -> None:
        self._drop()


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return conn.isAlive() == 1
    except libvirt.libvirtError:
        return False


def _close_quietly(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def expand(template: str, *, name: str, ip: str | None, mac: str) -> str:
    """A URI template from the config filled in for one node."""
    return template.replace("{name}", name).replace("{ip}", ip or name).replace("{mac}", mac)


class HostPool:
    """The HostLink of every hardware node, created when first needed."""

    def __init__(self, uri_template: str, *, connect_timeout: float, call_timeout: float) -> None:
        self.uri_template = uri_template
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.links: dict[str, HostLink] = {}

    def link(self, name: str, ip: str | None, mac: str) -> HostLink:
        uri = expand(self.uri_template, name=name, ip=ip, mac=mac)
        link = self.links.get(name)
        if link is None or link.uri != uri:
            if link is not None:
                link.close()
            link = HostLink(
                name, uri, connect_timeout=self.connect_timeout, call_timeout=self.call_timeout
            )
            self.links[name] = link
        return link

    def forget(self, keep: set[str]) -> None:
        for name in set(self.links) - keep:
            self.links.pop(name).close()

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()
