"""BootCatalog over a real SqliteStore: which file each machine gets, and DHCP's boot offer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cloudctl.config import load_config
from cloudctl.inventory import AddressPool, Role
from cloudctl.pxe.catalog import BootCatalog
from cloudctl.pxe.dhcp.bootmethods import PXELINUX_0, UNDIONLY_KPXE
from cloudctl.state.models import Image
from cloudctl.state.sqlite import SqliteStore
from cloudctl.state.store import Change, NodeRequest

EXAMPLE = Path(__file__).parents[3] / "etc" / "cloudctl.yaml"
WHO = Change("tester")
MAC = "52:54:00:00:00:01"


def scenario(tmp_path, body):
    async def run():
        config = load_config(EXAMPLE)
        store = SqliteStore(tmp_path / "s.db")
        await store.open()
        try:
            return await body(
                store, BootCatalog(store, config), AddressPool.from_network(config.network)
            )
        finally:
            await store.close()

    return asyncio.run(run())


def _image(name, multiboot=False):
    return Image(name, "k" * 64, "i" * 64, "x" * 64 if multiboot else None, 10, time.time())


def test_known_node_gets_its_rendered_files(tmp_path):
    async def body(store, catalog, pool):
        await store.add_node(NodeRequest(MAC, Role.HNODE), pool, WHO)
        await store.add_image(_image("deb12"), WHO)
        await store.set_profile(
            "hnode",
            image="deb12",
            bios_program="pxelinux.0",
            cmdline="console=ttyS0 {name}",
            hypervisor_args="",
            change=WHO,
        )
        return (
            catalog.render(f"boot/{MAC}.ipxe", None, None),
            catalog.render("pxelinux.cfg/01-52-54-00-00-00-01", None, None),
            catalog.render("pxelinux.cfg/0A140003", None, None),  # hn1 is 10.20.0.3
            catalog.render("pxelinux.cfg/01-52-54-00-00-00-99", None, None),  # unknown MAC
            catalog.render("pxelinux.0", None, None),
            catalog.boot_offer(store.node_by_mac(MAC)),
            catalog.boot_offer(None),
        )

    script, by_mac, by_ip, unknown, static, offer, unknown_offer = scenario(tmp_path, body)
    assert script.decode().startswith("#!ipxe\nkernel http://10.20.0.2:8080/images/deb12/kernel")
    assert "console=ttyS0 hn1" in script.decode()
    assert by_mac == by_ip
    assert b"KERNEL images/deb12/kernel" in by_mac
    assert unknown is None and static is None  # fall through to pxelinux's next name / disk
    assert offer.bios_program == PXELINUX_0
    assert offer.ipxe_script_url == "http://10.20.0.2:8080/boot/{mac}.ipxe"
    assert unknown_offer.bios_program == UNDIONLY_KPXE  # discovery profile default


def test_unknown_machine_gets_the_discovery_profile(tmp_path):
    async def body(store, catalog, pool):
        await store.add_image(_image("inventory-agent"), WHO)
        await store.set_profile(
            "discovery",
            image="inventory-agent",
            bios_program="undionly.kpxe",
            cmdline="console=ttyS0",
            hypervisor_args="",
            change=WHO,
        )
        return catalog.render("boot/52:54:00:00:00:77.ipxe", None, None), catalog.render(
            "pxelinux.cfg/default", None, None
        )

    script, default = scenario(tmp_path, body)
    assert b"images/inventory-agent/kernel" in script
    assert b"images/inventory-agent/kernel" in default


def test_profile_versions_and_rollback(tmp_path):
    async def body(store, catalog, pool):
        await store.add_image(_image("v1"), WHO)
        await store.add_image(_image("v2", multiboot=True), WHO)
        await store.set_profile(
            "hnode",
            image="v1",
            bios_program="undionly.kpxe",
            cmdline="a",
            hypervisor_args="",
            change=WHO,
        )
        await store.set_profile(
            "hnode",
            image="v2",
            bios_program="undionly.kpxe",
            cmdline="a",
            hypervisor_args="dom0_mem=1G",
            change=WHO,
        )
        await store.add_node(NodeRequest(MAC, Role.HNODE), pool, WHO)
        before = catalog.render(f"boot/{MAC}.ipxe", None, None)
        back = await store.rollback_profile("hnode", WHO)
        after = catalog.render(f"boot/{MAC}.ipxe", None, None)
        from cloudctl.state import Conflict

        with pytest.raises(Conflict, match="used by the hnode profile"):
            await store.remove_image("v2", WHO)  # still there for a roll-forward
        with pytest.raises(Conflict, match="at its first version"):
            await store.rollback_profile("hnode", WHO)
        return before, back, after, [p.active for p in store.profile_history("hnode")]

    before, back, after, actives = scenario(tmp_path, body)
    assert b"images/v2/hypervisor dom0_mem=1G" in before
    assert back.version == 1 and back.image == "v1"
    assert b"images/v1/kernel" in after and b"hypervisor" not in after
    assert actives == [True, False]


def test_storage_placeholder_renders_the_nodes_mirrors(tmp_path):
    from cloudctl.aoe.mdraid import parse_kernel_args, volume_uuid

    async def body(store, catalog, pool):
        for i, name in enumerate(("sn1", "sn2")):
            await store.add_node(
                NodeRequest(f"52:54:00:00:01:0{i}", Role.SNODE, name=name), pool, WHO
            )
        await store.add_node(NodeRequest(MAC, Role.HNODE), pool, WHO)
        await store.create_volume("root-hn1", 1 << 30, ["sn1", "sn2"], None, WHO)
        await store.assign_volume("root-hn1", "hn1", True, WHO)
        await store.add_image(_image("deb12"), WHO)
        await store.set_profile(
            "hnode",
            image="deb12",
            bios_program="undionly.kpxe",
            cmdline="console=ttyS0 {storage} root=/dev/md/root-{name}",
            hypervisor_args="",
            change=WHO,
        )
        return catalog.render(f"boot/{MAC}.ipxe", None, None).decode()

    script = scenario(tmp_path, body)
    kernel_line = next(line for line in script.splitlines() if line.startswith("kernel "))
    args = parse_kernel_args(kernel_line)
    (array,) = args.arrays
    assert array.name == "root-hn1"
    assert array.targets == ("e1.0", "e2.0")

    def bare(uuid):
        return uuid.replace(":", "").replace("-", "")

    assert bare(array.uuid) == bare(volume_uuid("root-hn1"))
    assert kernel_line.endswith("root=/dev/md/root-hn1")


def test_storage_that_md_cannot_name_renders_without_it(tmp_path):
    async def body(store, catalog, pool):
        for i, name in enumerate(("sn1", "sn2")):
            await store.add_node(
                NodeRequest(f"52:54:00:00:01:0{i}", Role.SNODE, name=name), pool, WHO
            )
        await store.add_node(NodeRequest(MAC, Role.HNODE), pool, WHO)
        too_long = "v" * 40  # a valid volume name, but md array names stop at 32 characters
        await store.create_volume(too_long, 1 << 30, ["sn1", "sn2"], None, WHO)
        await store.assign_volume(too_long, "hn1", True, WHO)
        await store.add_image(_image("deb12"), WHO)
        await store.set_profile(
            "hnode",
            image="deb12",
            bios_program="undionly.kpxe",
            cmdline="console=ttyS0 {storage}",
            hypervisor_args="",
            change=WHO,
        )
        return catalog.render(f"boot/{MAC}.ipxe", None, None).decode()

    script = scenario(tmp_path, body)
    assert "kernel http://10.20.0.2:8080/images/deb12/kernel" in script
    assert "cloudctl.md=" not in script
