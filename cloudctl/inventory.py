"""Rules for what may enter the inventory: MAC, name and role syntax, and the address pool.

Pure functions and frozen data, shared by the API (to reject bad input before any write) and
the state store (to allocate names and fixed addresses inside its write transaction).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from cloudctl.config import NetworkConfig

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


class InventoryError(ValueError):
    """Input that can never be valid, whatever the state holds (bad MAC, name, role, IP)."""


class Role(StrEnum):
    HNODE = "hnode"
    SNODE = "snode"


class NodeState(StrEnum):
    DISCOVERED = "discovered"
    REGISTERED = "registered"
    READY = "ready"
    DRAINED = "drained"


# Auto-allocated names: hn1, hn2 ... and sn1, sn2 ... (short, as operators type them).
NAME_PREFIX = {Role.HNODE: "hn", Role.SNODE: "sn"}


def parse_mac(text: str) -> str:
    """Normalise a MAC to lower-case colon form; accept ':' '-' or no separators."""
    candidate = text.strip().lower()
    if not _MAC_RE.match(candidate):
        raise InventoryError(
            f"invalid MAC address {text!r}: expected six hex octets like 52:54:00:12:34:56"
        )
    digits = candidate.replace(":", "").replace("-", "")
    if int(digits[0:2], 16) & 1:
        raise InventoryError(f"invalid MAC address {text!r}: it is a multicast address")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def parse_name(text: str) -> str:
    if not _NAME_RE.match(text):
        raise InventoryError(
            f"invalid node name {text!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter (it becomes a DNS label)"
        )
    return text


def parse_segment(text: str) -> str:
    if not _NAME_RE.match(text):
        raise InventoryError(
            f"invalid storage segment {text!r}: use 1-63 lower-case letters, digits and '-', "
            "starting with a letter"
        )
    return text


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise InventoryError(f"invalid role {text!r}: choose one of {choices}") from None


@dataclass(frozen=True)
class AddressPool:
    """Where fixed node addresses may come from: the subnet, minus what is reserved."""

    subnet: ipaddress.IPv4Network
    dynamic_first: ipaddress.IPv4Address
    dynamic_last: ipaddress.IPv4Address
    reserved: frozenset[ipaddress.IPv4Address]

    @classmethod
    def from_network(cls, network: NetworkConfig) -> AddressPool:
        return cls(
            subnet=network.subnet,
            dynamic_first=network.dynamic_range[0],
            dynamic_last=network.dynamic_range[1],
            reserved=frozenset({network.gateway, network.server}),
        )

    def check_fixed(self, text: str) -> ipaddress.IPv4Address:
        """Validate an operator-chosen fixed address; return it or raise InventoryError."""
        try:
            address = ipaddress.IPv4Address(text)
        except ValueError:
            raise InventoryError(f"invalid IP address {text!r}") from None
        if address not in self.subnet:
            raise InventoryError(f"IP address {address} is outside the cloud subnet {self.subnet}")
        if address in (self.subnet.network_address, self.subnet.broadcast_address):
            raise InventoryError(
                f"IP address {address} is the subnet's network or broadcast address"
            )
        if address in self.reserved:
            raise InventoryError(f"IP address {address} is the gateway's or the config node's")
        if self.dynamic_first <= address <= self.dynamic_last:
            raise InventoryError(
                f"IP address {address} is inside the dynamic range "
                f"{self.dynamic_first}-{self.dynamic_last}; fixed addresses must be outside it"
            )
        return address

    def candidates(self, start: int) -> Iterator[int]:
        """Every allocatable address as an int, starting at `start` and wrapping around once."""
        low = int(self.subnet.network_address) + 1
        high = int(self.subnet.broadcast_address) - 1
        skip = {int(a) for a in self.reserved}
        dyn_low, dyn_high = int(self.dynamic_first), int(self.dynamic_last)
        start = min(max(start, low), high + 1)
        for first, last in ((start, high), (low, start - 1)):
            value = first
            while value <= last:
                if dyn_low <= value <= dyn_high:
                    value = dyn_high + 1
                    continue
                if value not in skip:
                    yield value
                value += 1


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_ALIGN = 1 << 20  # volumes are whole MiB: sector- and page-aligned for every initiator


def parse_size(text: str) -> int:
    """'4G', '512M', '10GiB', '1048576' -> bytes (binary units), rounded up to whole MiB."""
    found = _SIZE_RE.match(str(text))
    if not found:
        raise InventoryError(f"invalid size {text!r}: use a number with K, M, G or T, like 4G")
    unit = (found.group(2) or "").upper().rstrip("B").rstrip("I")
    size = int(found.group(1)) * _UNITS[unit]
    if size <= 0:
        raise InventoryError(f"invalid size {text!r}: must be more than zero")
    return -(-size // SIZE_ALIGN) * SIZE_ALIGN
