"""What a machine boots, answered from the inventory: DHCP's boot offer and rendered files.

The node's role picks its profile (hnode, snode; `discovery` for machines not registered),
the profile picks the image, and render.py turns that into an iPXE script or pxelinux config
for the file name the machine asked for. Every lookup is an index read per request.
"""

from __future__ import annotations

import ipaddress
import logging
import re

from cloudctl.aoe.mdraid import AoeLeg, MirrorPlan, render_kernel_args
from cloudctl.aoe.mirror import MirrorError
from cloudctl.config import Config
from cloudctl.inventory import InventoryError, parse_mac
from cloudctl.pxe.dhcp.bootmethods import PXELINUX_0, UNDIONLY_KPXE, BootOffer
from cloudctl.pxe.render import (
    DEFAULT_BIOS_PROGRAM,
    DEFAULT_CMDLINE,
    BootTarget,
    ipxe_script,
    pxelinux_config,
)
from cloudctl.state import Node, StateStore
from cloudctl.state.models import Profile

log = logging.getLogger(__name__)

ROLES = ("hnode", "snode", "instance", "discovery")
_PXELINUX_MAC = re.compile(r"^pxelinux\.cfg/01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})$")
_PXELINUX_HEXIP = re.compile(r"^pxelinux\.cfg/([0-9A-F]{8})$")
_IPXE_SCRIPT = re.compile(r"^boot/([0-9a-f:]{17})\.ipxe$")


def default_profile(role: str) -> Profile:
    return Profile(role, 0, None, DEFAULT_BIOS_PROGRAM, DEFAULT_CMDLINE, "", True, 0.0)


class BootCatalog:
    def __init__(self, store: StateStore, config: Config) -> None:
        self.store = store
        self.config = config
        self.script_url = (
            f"http://{config.network.server}:{config.boot.http_port}/boot/{{mac}}.ipxe"
        )

    def profile_for(self, node: Node | None) -> Profile:
        role = node.role.value if node is not None and node.role is not None else "discovery"
        return self.store.get_profile(role) or default_profile(role)

    def boot_offer(self, node: Node | None) -> BootOffer:
        """For DHCP: BIOS clients get pxelinux.0 or undionly.kpxe as the node's profile says."""
        profile = self.profile_for(node)
        bios = PXELINUX_0 if profile.bios_program == "pxelinux.0" else UNDIONLY_KPXE
        return BootOffer(ipxe_script_url=self.script_url, bios_program=bios)

    def render(self, name: str, mac: str | None, client_ip: str | None) -> bytes | None:
        """For BootFiles: the rendered file for `name`, or None if it is not a rendered name."""
        if found := _IPXE_SCRIPT.match(name):
            node_mac = self._mac(found.group(1))
            return ipxe_script(self._target(node_mac)).encode() if node_mac else None
        if found := _PXELINUX_MAC.match(name):
            node_mac = self._mac(found.group(1))
            node = self.store.node_by_mac(node_mac) if node_mac else None
            # Unknown MACs fall through to pxelinux's next names and finally to `default`.
            return pxelinux_config(self._target(node_mac, node)).encode() if node else None
        if found := _PXELINUX_HEXIP.match(name):
            node = self.store.node_by_ip(ipaddress.IPv4Address(int(found.group(1), 16)))
            return pxelinux_config(self._target(node.mac, node)).encode() if node else None
        if name == "pxelinux.cfg/default":
            return pxelinux_config(self._target(mac or "00:00:00:00:00:00")).encode()
        return None

    def mac_of(self, client_ip: str) -> str | None:
        """Who is asking, by address: a registered node, else whoever holds the lease."""
        try:
            address = ipaddress.IPv4Address(client_ip)
        except ValueError:
            return None
        node = self.store.node_by_ip(address)
        if node is not None:
            return node.mac
        lease = self.store.lease_by_ip(address)
        return lease.mac if lease is not None else None

    @staticmethod
    def _mac(text: str) -> str | None:
        try:
            return parse_mac(text)
        except InventoryError:
            return None

    def _target(self, mac: str, node: Node | None = None) -> BootTarget:
        if node is None:
            node = self.store.node_by_mac(mac)
        profile = self.profile_for(node)
        image = self.store.get_image(profile.image) if profile.image else None
        net = self.config.network
        return BootTarget(
            name=node.name if node else "unknown",
            mac=mac,
            ip=str(node.ip) if node and node.ip else "",
            role=profile.role,
            server=str(net.server),
            http_port=self.config.boot.http_port,
            domain=net.domain,
            gateway=str(net.gateway),
            netmask=str(net.subnet.netmask),
            image=image.name if image else None,
            multiboot=image.multiboot if image else False,
            cmdline=profile.cmdline,
            hypervisor_args=profile.hypervisor_args,
            storage=self._storage_args(node) if "{storage}" in profile.cmdline else "",
        )

    def _storage_args(self, node: Node | None) -> str:
        """md RAID1 kernel arguments for the mirrored volumes assigned to `node`."""
        if node is None:
            return ""
        volumes = [v for v in self.store.volumes_assigned_to(node.name) if v.mirrored]
        if not volumes:
            return ""
        try:
            plans = [
                MirrorPlan.for_volume(v.name, [AoeLeg(g.shelf, g.slot, g.snode) for g in v.legs])
                for v in volumes
            ]
            return render_kernel_args(plans)
        except MirrorError as exc:
            log.warning("cannot render the storage arguments of %s: %s", node.name, exc)
            return ""
