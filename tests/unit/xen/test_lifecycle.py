"""Instances against libvirt's test driver (one driver instance per hardware node, in-process):
lifecycle jobs, placement from what libvirt reports, reconciliation and failover."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

import libvirt
import pytest

from cloudctl.api.instances import job_kinds
from cloudctl.config import load_config
from cloudctl.inventory import AddressPool, Role
from cloudctl.jobs import JobRunner
from cloudctl.state.models import Image, Instance, InstanceState, JobState
from cloudctl.state.sqlite import SqliteStore
from cloudctl.state.store import Change, NodeRequest
from cloudctl.xen.domxml import InstanceSpec, Nic, domain_xml
from cloudctl.xen.hosts import HostPool, start_libvirt_events
from cloudctl.xen.lifecycle import Hypervisors
from cloudctl.xen.moves import Mover
from cloudctl.xen.reconcile import Reconciler
from tests.conftest import write_config

WHO = Change("tester", "unit test")
NODE_XML = """<node><cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active>
<max>{cpus}</max><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads>
</cpu><memory>{kib}</memory></node>"""


class Cloud:
    """A store, three hardware nodes on the test driver (hn3's file is missing: unreachable)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        for name, mib in (("hn1", 4096), ("hn2", 2048)):
            (tmp / f"{name}.xml").write_text(NODE_XML.format(cpus=4, kib=mib * 1024))
        config_path = write_config(
            tmp,
            hypervisor={"uri": f"test://{tmp}/{{name}}.xml", "flavour": "qemu"},
        )
        self.config = load_config(config_path)
        self.store = SqliteStore(self.config.state.path)
        start_libvirt_events()
        self.pool = HostPool(self.config.hypervisor.uri, connect_timeout=5, call_timeout=10)
        self.hv = Hypervisors(self.store, self.config, self.pool)
        self.mover = Mover(self.hv)
        self.reconciler = Reconciler(self.hv)
        self.runner = JobRunner(self.store, job_kinds(self.hv, self.mover))

    async def open(self) -> None:
        await self.store.open()
        pool = AddressPool(
            subnet=ipaddress.IPv4Network("10.20.0.0/24"),
            dynamic_first=ipaddress.IPv4Address("10.20.0.200"),
            dynamic_last=ipaddress.IPv4Address("10.20.0.250"),
            reserved=frozenset(),
        )
        for i in (1, 2, 3):
            await self.store.add_node(
                NodeRequest(f"52:54:00:aa:00:0{i}", Role.HNODE, name=f"hn{i}"), pool, WHO
            )
        image_dir = self.config.boot.image_dir / "guest"
        image_dir.mkdir(parents=True)
        for part in ("kernel", "initrd"):
            (image_dir / part).write_bytes(b"not booted by the test driver")
        await self.store.add_image(Image("guest", "0" * 64, "0" * 64, None, 10, time.time()), WHO)
        await self.store.set_profile(
            "instance",
            image="guest",
            bios_program="undionly.kpxe",
            cmdline="console=ttyS0 hostname={name}",
            hypervisor_args="",
            change=WHO,
        )
        await self.reconciler.poll()

    async def close(self) -> None:
        await self.runner.shutdown()
        self.pool.close()
        await self.store.close()

    async def create(self, name: str, memory: int = 512, vcpus: int = 1, **kw) -> Instance:
        now = time.time()
        mac = "52:54:00:cc:00:%02x" % (len(self.store.list_instances()) + 1)
        return await self.store.create_instance(
            Instance(
                name,
                _uuid(name),
                mac,
                memory,
                vcpus,
                None,
                InstanceState.STOPPED,
                kw.get("group"),
                "instance",
                None,
                now,
                now,
            ),
            WHO,
        )

    async def run(self, kind: str, **params) -> object:
        job = await self.runner.submit(kind, params, WHO)
        while not (job := self.store.get_job(job.id)).state.finished:
            await asyncio.sleep(0.01)
        return job

    def conn(self, node: str) -> libvirt.virConnect:
        return self.pool.links[node]._conn


def _uuid(name: str) -> str:
    return f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}"


def scenario(test):
    def wrapper(tmp_path):
        async def go():
            cloud = Cloud(tmp_path)
            await cloud.open()
            try:
                await test(cloud)
            finally:
                await cloud.close()

        asyncio.run(go())

    wrapper.__name__ = test.__name__
    return wrapper


@scenario
async def test_reachability_and_capacity_come_from_libvirt(cloud):
    hosts = {h.name: h for h in cloud.hv.snapshot().hosts}
    assert (hosts["hn1"].memory_mib, hosts["hn1"].vcpus, hosts["hn1"].reachable) == (4096, 4, True)
    assert hosts["hn2"].memory_mib == 2048
    assert hosts["hn3"].reachable is False
    assert "hn3.xml" in cloud.pool.links["hn3"].error


@scenario
async def test_start_places_by_free_memory_and_defines_the_domain(cloud):
    await cloud.create("web1")
    job = await cloud.run("instance-start", name="web1")
    assert job.state is JobState.SUCCEEDED, job.error
    instance = cloud.store.get_instance("web1")
    assert (instance.state, instance.node) == (InstanceState.RUNNING, "hn1")  # spread: most free
    dom = cloud.conn("hn1").lookupByName("web1")
    assert dom.isActive() and dom.UUIDString() == instance.uuid
    assert "hostname=web1" in dom.XMLDesc(0)
    # Spread: hn1 has 3584 MiB free now, hn2 2048; a 3000 MiB instance fits only on hn1.
    await cloud.create("big", memory=3000)
    assert (await cloud.run("instance-start", name="big")).state is JobState.SUCCEEDED
    assert cloud.store.get_instance("big").node == "hn1"
    await cloud.create("huge", memory=4000)
    job = await cloud.run("instance-start", name="huge")
    assert job.state is JobState.FAILED
    assert "no hardware node can run huge" in job.error and "hn3" in job.error
    assert cloud.store.get_instance("huge").state is InstanceState.STOPPED


@scenario
async def test_anti_affinity_group_and_pinned_node(cloud):
    for name in ("db1", "db2", "db3"):
        await cloud.create(name, group="db")
    await cloud.run("instance-start", name="db1", node="hn2")
    assert cloud.store.get_instance("db1").node == "hn2"
    await cloud.run("instance-start", name="db2")
    assert cloud.store.get_instance("db2").node == "hn1"
    job = await cloud.run("instance-start", name="db3")
    assert job.state is JobState.FAILED
    assert "hn1, hn2 already running group db" in job.error


@scenario
async def test_stop_reboot_destroy(cloud):
    await cloud.create("app")
    await cloud.run("instance-start", name="app")
    assert (await cloud.run("instance-reboot", name="app")).state is JobState.SUCCEEDED
    assert (await cloud.run("instance-stop", name="app")).state is JobState.SUCCEEDED
    instance = cloud.store.get_instance("app")
    assert (instance.state, instance.node) == (InstanceState.STOPPED, None)
    assert "app" not in [d.name() for d in cloud.conn("hn1").listAllDomains()]
    job = await cloud.run("instance-reboot", name="app")
    assert job.state is JobState.FAILED and "not running" in job.error
    await cloud.run("instance-start", name="app")
    assert (await cloud.run("instance-destroy", name="app")).state is JobState.SUCCEEDED
    assert cloud.store.get_instance("app") is None
    assert cloud.conn("hn1").listAllDomains() == []
    actions = [e.action for e in cloud.store.list_audit(target="instance/app", limit=50)]
    assert "instance.destroy" in actions and "instance.create" in actions


@scenario
async def test_reconcile_reports_foreign_domains_and_never_destroys_them(cloud):
    await cloud.create("web1")
    await cloud.run("instance-start", name="web1")
    spec = InstanceSpec(
        name="stray",
        uuid="11111111-2222-4333-8444-555555555555",
        memory_mib=128,
        vcpus=1,
        flavour="qemu",
        boot="hvm",
        kernel="/k",
        nics=(Nic("br0", "52:54:00:de:ad:01"),),
    )
    cloud.conn("hn1").defineXML(domain_xml(spec)).create()
    await cloud.reconciler.poll()
    (finding,) = cloud.reconciler.unexpected.values()
    assert (finding.node, finding.domain) == ("hn1", "stray")
    assert "not an instance cloudctl knows" in finding.detail
    assert cloud.conn("hn1").lookupByName("stray").isActive()
    # The guest powers itself off: recorded as stopped, its definition cleaned up.
    cloud.conn("hn1").lookupByName("web1").destroy()
    await cloud.reconciler.poll()
    assert cloud.store.get_instance("web1").state is InstanceState.STOPPED
    # Undefined behind our back: lost, not silently recreated.
    await cloud.run("instance-start", name="web1")
    dom = cloud.conn("hn1").lookupByName("web1")
    dom.destroy()
    dom.undefine()
    await cloud.reconciler.poll()
    assert cloud.store.get_instance("web1").state is InstanceState.LOST


@scenario
async def test_migration_refused_by_driver_leaves_instance_on_source(cloud):
    await cloud.create("web1")
    await cloud.run("instance-start", name="web1")
    job = await cloud.run("instance-migrate", name="web1", to="hn2")
    assert job.state is JobState.FAILED and "keeps running on hn1" in job.error
    instance = cloud.store.get_instance("web1")
    assert (instance.state, instance.node) == (InstanceState.RUNNING, "hn1")
    assert cloud.conn("hn1").lookupByName("web1").isActive()
    job = await cloud.run("instance-migrate", name="web1", to="hn3")
    assert job.state is JobState.FAILED and "unreachable" in job.error


@scenario
async def test_drain_refuses_before_moving_when_a_plan_is_incomplete(cloud):
    await cloud.create("big", memory=3000)
    await cloud.run("instance-start", name="big")
    await cloud.store.set_drained("hn1", True, WHO)
    job = await cloud.run("node-drain", node="hn1")
    assert job.state is JobState.FAILED
    assert "nothing was moved" in job.error and "big" in job.error
    assert cloud.store.get_instance("big").node == "hn1"


@scenario
async def test_failover_restarts_a_dead_nodes_instances_elsewhere(cloud):
    await cloud.create("web1")
    await cloud.run("instance-start", name="web1")
    job = await cloud.run("node-failover", node="hn1")
    assert job.state is JobState.FAILED and "not dead" in job.error
    # hn1 dies: its libvirt no longer answers (the driver file is gone, the link dropped).
    (cloud.tmp / "hn1.xml").unlink()
    cloud.pool.links["hn1"].close()
    await cloud.reconciler.poll()
    assert cloud.store.get_instance("web1").state is InstanceState.LOST
    job = await cloud.run("node-failover", node="hn1")
    assert job.state is JobState.SUCCEEDED, job.error
    instance = cloud.store.get_instance("web1")
    assert (instance.state, instance.node) == (InstanceState.RUNNING, "hn2")
    assert cloud.conn("hn2").lookupByName("web1").isActive()


@pytest.mark.parametrize("bad", ["hn9"])
def test_unknown_pinned_node_is_a_clear_failure(tmp_path, bad):
    async def go():
        cloud = Cloud(tmp_path)
        await cloud.open()
        try:
            await cloud.create("x")
            job = await cloud.run("instance-start", name="x", node=bad)
            assert job.state is JobState.FAILED
            assert f"no hardware node named {bad!r}" in job.error
        finally:
            await cloud.close()

    asyncio.run(go())


@scenario
async def test_storage_maintenance_moves_instances_that_would_lose_their_last_path(cloud):
    from cloudctl.maintenance import StorageCoordinator

    pool = AddressPool(
        subnet=ipaddress.IPv4Network("10.20.0.0/24"),
        dynamic_first=ipaddress.IPv4Address("10.20.0.200"),
        dynamic_last=ipaddress.IPv4Address("10.20.0.250"),
        reserved=frozenset(),
    )
    for i, segment in ((1, "rack-a"), (2, "rack-b")):
        await cloud.store.add_node(
            NodeRequest(f"52:54:00:bb:00:0{i}", Role.SNODE, name=f"sn{i}", segment=segment),
            pool,
            WHO,
        )
    await cloud.store.create_volume("data", 1 << 30, ["sn1", "sn2"], None, WHO)
    # Two storage segments: hn1 is cabled to sn1 only (rack-a), hn2 (no segment) to both.
    await cloud.store.set_segment("hn1", "rack-a", WHO)
    now = time.time()
    await cloud.store.create_instance(
        Instance(
            "db",
            _uuid("db"),
            "52:54:00:cc:01:01",
            512,
            1,
            None,
            InstanceState.STOPPED,
            None,
            "instance",
            "data",
            now,
            now,
        ),
        WHO,
    )
    await cloud.run("instance-start", name="db", node="hn1")
    assert cloud.store.get_volume("data").assigned == ("hn1",)  # its exports admit hn1
    plan = cloud.hv.storage_plan("sn1")
    assert [(m.instance, m.source, m.target) for m in plan.moves] == [("db", "hn1", "hn2")]
    assert cloud.hv.storage_plan("sn2").moves == ()  # hn1 keeps its path through sn1
    # The move is attempted first; the test driver cannot migrate, so nothing goes out of
    # service and the instance stays where it was.
    coordinator = StorageCoordinator(cloud.store)
    coordinator.hypervisors, coordinator.mover = cloud.hv, cloud.mover
    cloud.runner.kinds["storage-maintenance"] = coordinator.job_kind()
    job = await cloud.run(
        "storage-maintenance",
        snode="sn1",
        entering=True,
        volumes=[],
        timeout=5.0,
        moves=[["db", "hn2"]],
    )
    assert job.state is JobState.FAILED and "migration of db to hn2 failed" in job.error
    assert cloud.store.storage_in_maintenance() == []
    db = cloud.store.get_instance("db")
    assert (db.state, db.node) == (InstanceState.RUNNING, "hn1")
    # With hn2 drained nowhere keeps a path: the plan says so before anything moves.
    await cloud.store.set_drained("hn2", True, WHO)
    plan = cloud.hv.storage_plan("sn1")
    assert plan.moves == () and [name for name, _ in plan.stuck] == ["db"]


@scenario
async def test_automatic_failover_after_failover_after_seconds(cloud):
    import dataclasses

    cloud.hv.hv = dataclasses.replace(cloud.hv.hv, failover=True, failover_after=30)
    submitted = []

    async def failover(node: str) -> None:
        submitted.append(await cloud.runner.submit("node-failover", {"node": node}, WHO))

    cloud.reconciler.failover = failover
    await cloud.create("web1")
    await cloud.run("instance-start", name="web1")
    (cloud.tmp / "hn1.xml").unlink()
    cloud.pool.links["hn1"].close()
    await cloud.reconciler.poll()
    assert submitted == []  # unreachable, but not for failover_after seconds yet
    cloud.pool.links["hn1"].changed_at -= 31
    await cloud.reconciler.poll()
    (job,) = submitted
    while not (job := cloud.store.get_job(job.id)).state.finished:
        await asyncio.sleep(0.01)
    assert job.state is JobState.SUCCEEDED, job.error
    assert cloud.store.get_instance("web1").node == "hn2"
    await cloud.reconciler.poll()
    assert len(submitted) == 1  # nothing left on hn1: no second failover


@scenario
async def test_storage_segments_decide_which_storage_nodes_a_node_reaches(cloud):
    pool = AddressPool(
        subnet=ipaddress.IPv4Network("10.20.0.0/24"),
        dynamic_first=ipaddress.IPv4Address("10.20.0.200"),
        dynamic_last=ipaddress.IPv4Address("10.20.0.250"),
        reserved=frozenset(),
    )
    for i, (role, name, segment) in enumerate(
        [
            (Role.SNODE, "sn1", "rack-a"),
            (Role.SNODE, "sn2", "rack-b"),
            (Role.SNODE, "sn3", None),
            (Role.HNODE, "hn4", "rack-a"),
        ]
    ):
        await cloud.store.add_node(
            NodeRequest(f"52:54:00:dd:00:0{i}", role, name=name, segment=segment), pool, WHO
        )
    everything = frozenset({"sn1", "sn2", "sn3"})
    assert cloud.hv.reachable_storage("hn4", everything) == {"sn1", "sn3"}
    assert cloud.hv.reachable_storage("hn1", everything) == everything  # no segment: all
    assert cloud.hv.reachable_storage("hn4", frozenset({"sn2", "sn3"})) == {"sn3"}
    hosts = {h.name: h for h in cloud.hv.snapshot().hosts}
    assert hosts["hn4"].storage == {"sn1", "sn3"} and hosts["hn1"].storage == everything
    # Recabled: hn4 moves to rack-b.
    await cloud.store.set_segment("hn4", "rack-b", WHO)
    assert cloud.hv.reachable_storage("hn4", everything) == {"sn2", "sn3"}
    await cloud.store.set_segment("hn4", None, WHO)
    assert cloud.hv.reachable_storage("hn4", everything) == everything


def test_xen_instances_are_pvh_unless_they_ask_for_hvm(tmp_path):
    import dataclasses

    from cloudctl.xen.domxml import domain_xml

    async def go():
        cloud = Cloud(tmp_path)
        await cloud.open()
        try:
            cloud.hv.hv = dataclasses.replace(cloud.hv.hv, flavour="xen", boot="pvh")
            pvh = await cloud.create("pvh1")
            spec = cloud.hv.spec(pvh)
            assert spec.boot == "pvh" and '<type arch="x86_64" machine="xenpvh">' in (
                domain_xml(spec).replace("'", '"')
            )
            now = time.time()
            hvm = await cloud.store.create_instance(
                Instance(
                    "hvm1",
                    _uuid("hvm1"),
                    "00:16:3e:00:00:09",
                    512,
                    1,
                    None,
                    InstanceState.STOPPED,
                    None,
                    "instance",
                    None,
                    now,
                    now,
                    boot="hvm",
                ),
                WHO,
            )
            assert cloud.store.get_instance("hvm1").boot == "hvm"
            spec = cloud.hv.spec(hvm)
            assert spec.boot == "hvm" and spec.kernel is not None  # the profile's kernel
            assert 'machine="xenfv">hvm</type>' in domain_xml(spec).replace("'", '"')
        finally:
            await cloud.close()

    asyncio.run(go())
