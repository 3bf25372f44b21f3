"""What an AoE export is (its configuration, checked on creation) and the records a responder
gives out about it: the protocol state initiators changed, and its counters."""

from __future__ import annotations

from dataclasses import dataclass

from cloudctl.aoe import ata
from cloudctl.aoe.codec import (
    BROADCAST_SHELF,
    BROADCAST_SLOT,
    MAX_CONFIG_STRING,
    AoeCodecError,
    parse_mac,
)

__all__ = [
    "MASK_LIST_MAX",
    "RESERVE_LIST_MAX",
    "AoeConfigError",
    "Export",
    "ExportState",
    "ResponderStats",
]

# The longest lists whose read answers still fit one frame at MTU 1500.
MASK_LIST_MAX = (1500 - 10 - 4) // 8  # 185
RESERVE_LIST_MAX = (1500 - 10 - 2) // 6  # 248


class AoeConfigError(ValueError):
    """An export or responder is configured with values AoE cannot serve."""


@dataclass(frozen=True, slots=True)
class Export:
    """One AoE target `eSHELF.SLOT`. `allowed_macs` seeds its MAC mask list (None: every host;
    MACs as bytes or "52:54:00:..." strings); hosts outside the list get no answer at all.
    `serial` defaults to "cloudctl-eSHELF.SLOT" in the IDENTIFY page."""

    shelf: int
    slot: int
    size_sectors: int
    config_string: bytes = b""
    allowed_macs: frozenset[bytes | str] | None = None
    read_only: bool = False
    serial: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.shelf < BROADCAST_SHELF:
            raise AoeConfigError(f"shelf {self.shelf} must be 0..65534 (65535 is broadcast)")
        if not 0 <= self.slot < BROADCAST_SLOT:
            raise AoeConfigError(f"slot {self.slot} must be 0..254 (255 is broadcast)")
        if not 0 < self.size_sectors <= ata.MAX_LBA48_SECTORS:
            raise AoeConfigError(f"size {self.size_sectors} sectors must be 1 .. 2**48")
        if len(self.config_string) > MAX_CONFIG_STRING:
            raise AoeConfigError(f"config string longer than {MAX_CONFIG_STRING} bytes")
        if self.allowed_macs is not None:
            if not self.allowed_macs:
                # An empty AoE mask list means "everyone"; refuse the ambiguity.
                raise AoeConfigError("allowed_macs is empty: use None to serve every host")
            if len(self.allowed_macs) > MASK_LIST_MAX:
                raise AoeConfigError(f"allowed_macs has more than {MASK_LIST_MAX} entries")
            try:
                macs = frozenset(parse_mac(m) for m in self.allowed_macs)
            except AoeCodecError as exc:
                raise AoeConfigError(f"allowed_macs: {exc}") from None
            object.__setattr__(self, "allowed_macs", macs)
        serial = self.serial or f"cloudctl-e{self.shelf}.{self.slot}"
        try:
            ata.check_ata_string(serial, 20, "serial")
        except ValueError as exc:
            raise AoeConfigError(str(exc)) from None
        object.__setattr__(self, "serial", serial)
        object.__setattr__(self, "config_string", bytes(self.config_string))


@dataclass(frozen=True, slots=True)
class ExportState:
    """The protocol state initiators can change, as of one moment."""

    config_string: bytes
    mask_list: tuple[bytes, ...]
    reserve_list: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ResponderStats:
    """`handled`: answered or deliberately silent (a config test that did not match);
    `ignored`: not for us (other target, answers, foreign ethertype); `dropped`: malformed;
    `denied`: source not on the export's mask list; `errors`: answers carrying an AoE error,
    a mask error or an ATA ERR status."""

    received: int = 0
    handled: int = 0
    ignored: int = 0
    dropped: int = 0
    denied: int = 0
    errors: int = 0
