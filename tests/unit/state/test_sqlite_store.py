"""SqliteStore: allocation, audit in the same transaction, group commit, migrations, locking."""

from __future__ import annotations

import asyncio
import ipaddress
import sqlite3

import pytest

from cloudctl.inventory import AddressPool, NodeState, Role
from cloudctl.state import Conflict, JobState, NotFound, StateError
from cloudctl.state.schema import MIGRATIONS
from cloudctl.state.sqlite import SqliteStore
from cloudctl.state.store import Change, NodeRequest

POOL = AddressPool(
    subnet=ipaddress.IPv4Network("10.1.0.0/29"),
    dynamic_first=ipaddress.IPv4Address("10.1.0.6"),
    dynamic_last=ipaddress.IPv4Address("10.1.0.6"),
    reserved=frozenset({ipaddress.IPv4Address("10.1.0.1")}),
)
WHO = Change(actor="tester", reason="unit test")


def run(coro):
    return asyncio.run(coro)


async def _opened(path):
    store = SqliteStore(path)
    await store.open()
    return store


def test_allocates_names_and_addresses_until_the_pool_is_full(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        nodes = [
            await store.add_node(NodeRequest(f"52:54:00:00:00:0{i}", Role.HNODE), POOL, WHO)
            for i in range(4)
        ]
        with pytest.raises(Conflict, match=r"no free address left in 10\.1\.0\.0/29"):
            await store.add_node(NodeRequest("52:54:00:00:00:09", Role.HNODE), POOL, WHO)
        await store.remove_node("hn2", WHO)
        reused = await store.add_node(NodeRequest("52:54:00:00:00:0a", Role.SNODE), POOL, WHO)
        await store.close()
        return nodes, reused

    nodes, reused = run(scenario())
    assert [(n.name, str(n.ip)) for n in nodes] == [
        ("hn1", "10.1.0.2"),
        ("hn2", "10.1.0.3"),
        ("hn3", "10.1.0.4"),
        ("hn4", "10.1.0.5"),
    ]
    assert (reused.name, str(reused.ip)) == ("sn1", "10.1.0.3")  # the freed address, after wrap


def test_failed_write_leaves_no_trace_and_does_not_spoil_its_batch(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        results = await asyncio.gather(
            store.add_node(NodeRequest("52:54:00:00:00:01", Role.HNODE), POOL, WHO),
            store.add_node(NodeRequest("52:54:00:00:00:01", Role.SNODE), POOL, WHO),
            store.add_node(NodeRequest("52:54:00:00:00:02", Role.HNODE, name="hn1"), POOL, WHO),
            store.add_node(NodeRequest("52:54:00:00:00:03", Role.HNODE), POOL, WHO),
            return_exceptions=True,
        )
        state = (store.list_nodes(), store.list_audit(), store.commits)
        await store.close()
        return results, state

    results, (nodes, audit, commits) = run(scenario())
    assert isinstance(results[1], Conflict)
    assert isinstance(results[2], Conflict)
    assert [n.mac for n in nodes] == ["52:54:00:00:00:01", "52:54:00:00:00:03"]
    assert [a.action for a in audit] == ["node.add", "node.add"]
    assert commits == 1  # four writes queued together, one transaction, one fsync


def test_group_commit_batches_a_burst(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        pool = AddressPool(
            ipaddress.IPv4Network("10.2.0.0/20"),
            ipaddress.IPv4Address("10.2.15.1"),
            ipaddress.IPv4Address("10.2.15.9"),
            frozenset(),
        )
        await asyncio.gather(
            *(
                store.add_node(
                    NodeRequest(f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}", Role.HNODE), pool, WHO
                )
                for i in range(500)
            )
        )
        result = (store.count_nodes(), store.commits)
        await store.close()
        return result

    count, commits = run(scenario())
    assert count == 500
    assert commits < 50


def test_drain_keeps_the_previous_state(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        await store.add_node(NodeRequest("52:54:00:00:00:01", Role.HNODE), POOL, WHO)
        drained = await store.set_drained("hn1", True, WHO)
        twice = await store.set_drained("hn1", True, WHO)
        back = await store.set_drained("hn1", False, WHO)
        with pytest.raises(NotFound):
            await store.set_drained("nope", True, WHO)
        await store.close()
        return drained, twice, back

    drained, twice, back = run(scenario())
    assert drained.state is twice.state is NodeState.DRAINED
    assert back.state is NodeState.REGISTERED


def test_jobs_and_progress(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        job = await store.create_job("test", {"steps": 2}, WHO)
        await store.set_job_state(job.id, JobState.RUNNING)
        await store.add_progress(job.id, "one")
        await store.add_progress(job.id, "two")
        left = await store.fail_unfinished_jobs("daemon died")
        final = store.get_job(job.id)
        lines = [p.line for p in store.job_progress(job.id, after=1)]
        await store.close()
        return job, left, final, lines

    job, left, final, lines = run(scenario())
    assert job.state is JobState.QUEUED
    assert left == [job.id]
    assert final.state is JobState.FAILED and final.error == "daemon died"
    assert final.started_at is not None and final.finished_at is not None
    assert lines == ["two"]


def test_schema_is_migrated_and_newer_schemas_are_refused(tmp_path):
    path = tmp_path / "s.db"

    async def open_close():
        store = await _opened(path)
        await store.close()

    run(open_close())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    newest = len(MIGRATIONS)
    expected = f"schema version {newest + 1} but this cloudctl knows only up to {newest}"
    with pytest.raises(StateError, match=expected):
        run(open_close())


def test_one_process_holds_the_state(tmp_path):
    async def scenario():
        first = await _opened(tmp_path / "s.db")
        try:
            with pytest.raises(StateError, match="is in use by another cloudctld"):
                await _opened(tmp_path / "s.db")
        finally:
            await first.close()
        second = await _opened(tmp_path / "s.db")  # free again once closed
        await second.close()

    run(scenario())


def test_binding_an_address_takes_it_from_its_previous_holder(tmp_path):
    async def scenario():
        store = await _opened(tmp_path / "s.db")
        ip_a, ip_b = ipaddress.IPv4Address("10.1.0.2"), ipaddress.IPv4Address("10.1.0.3")
        await store.bind_leases([("52:54:00:00:00:01", ip_a, 100.0, "hn1")])
        await store.bind_leases([("52:54:00:00:00:02", ip_a, 200.0, None)])  # address moves
        await store.bind_leases([("52:54:00:00:00:02", ip_b, 300.0, None)])  # client moves
        leases = store.list_leases()
        await store.close()
        return leases

    leases = run(scenario())
    assert [(lease.mac, str(lease.ip), lease.expires) for lease in leases] == [
        ("52:54:00:00:00:02", "10.1.0.3", 300.0)
    ]
