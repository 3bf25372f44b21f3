"""HostLink against libvirt endpoints that fail in the ways real nodes do: a node whose libvirt
accepts the connection and then says nothing is marked unreachable after connect_timeout, and
cloudctld is not held up by the hung call."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from cloudctl.xen.hosts import HostLink, HostPool, HypervisorError, expand, start_libvirt_events


@pytest.fixture
def silent_listener():
    """A TCP port that accepts connections and never answers (a hung libvirtd)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_a_silent_node_is_unreachable_after_the_timeout_not_hung_on(silent_listener):
    start_libvirt_events()
    link = HostLink(
        "hn1",
        f"qemu+tcp://127.0.0.1:{silent_listener}/system",
        connect_timeout=1,
        call_timeout=1,
    )

    async def go() -> float:
        begun = time.monotonic()
        with pytest.raises(HypervisorError, match="did not answer a connection within 1 s"):
            await link.refresh()
        return time.monotonic() - begun

    took = asyncio.run(go())
    assert link.reachable is False and "did not answer" in link.error
    assert took < 5  # the call was abandoned, not waited for
    link.close()


def test_a_refused_connection_says_why():
    start_libvirt_events()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    link = HostLink("hn2", f"qemu+tcp://127.0.0.1:{port}/system", connect_timeout=5, call_timeout=5)
    with pytest.raises(
        HypervisorError, match=f"hn2: cannot connect to qemu\\+tcp://127.0.0.1:{port}"
    ):
        asyncio.run(link.refresh())
    assert link.reachable is False


def test_uri_templates_and_pool_relinks_when_a_node_changes():
    assert expand("xen+tcp://{ip}/system", name="hn1", ip="10.0.0.5", mac="m") == (
        "xen+tcp://10.0.0.5/system"
    )
    assert expand("xen+ssh://root@{name}/system", name="hn1", ip=None, mac="m") == (
        "xen+ssh://root@hn1/system"
    )
    pool = HostPool("qemu+tcp://{ip}/system", connect_timeout=1, call_timeout=1)
    first = pool.link("hn1", "10.0.0.5", "m")
    assert pool.link("hn1", "10.0.0.5", "m") is first
    moved = pool.link("hn1", "10.0.0.6", "m")
    assert moved is not first and moved.uri == "qemu+tcp://10.0.0.6/system"
    pool.forget(set())
    assert pool.links == {}
