"""The cloud zone's contents, read from the inventory: the ZoneView the DNS server answers from."""

from __future__ import annotations

import ipaddress

from cloudctl.state import StateStore


class InventoryZone:
    """Nodes by name and address; every lookup is an index read, so answers are always current."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def address_of(self, label: str) -> ipaddress.IPv4Address | None:
        node = self.store.get_node(label)
        return node.ip if node is not None else None

    def name_of(self, address: ipaddress.IPv4Address) -> str | None:
        node = self.store.node_by_ip(address)
        return node.name if node is not None else None

    def serial(self) -> int:
        return self.store.last_change()
