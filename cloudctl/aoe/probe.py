"""Finding AoE targets on a segment, as an initiator would: a broadcast Query Config read, then
an ATA IDENTIFY DEVICE to every target that answers (its size is only in the IDENTIFY page).
Owns one AF_PACKET socket per probe; frames are built and parsed with the scapy layer.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from scapy.layers.l2 import Ether

from cloudctl.aoe.ata import STATUS_ERR, AtaCommand
from cloudctl.aoe.codec import BROADCAST_SHELF, BROADCAST_SLOT, ETHERTYPE_AOE, Command
from cloudctl.aoe.scapy_layer import AoE, AoEAta, AoEQueryConfig, pad

__all__ = ["ProbeError", "ProbedTarget", "identify_fields", "probe"]

_FLAG_RESPONSE = 0x8
_FLAG_ERROR = 0x4
# The Linux initiator's IDENTIFY sets the device register (lba3) to 0xA0; some targets check it.
_IDENTIFY_LBA = 0xA0 << 24
# After the discovery window, how long IDENTIFY answers still count (one resend halfway).
_IDENTIFY_GRACE = 0.5


class ProbeError(Exception):
    """The probe could not run (no such interface, no permission); the message says which."""


@dataclass(frozen=True, slots=True)
class ProbedTarget:
    """One answer to the probe. `sectors` (512 bytes each), `model` and `serial` come from
    IDENTIFY and are None if the target did not answer it; `max_sectors` is the most sectors
    per ATA frame the target accepts, `buffer_count` the requests it queues per initiator."""

    shelf: int
    slot: int
    mac: str
    config_string: str
    firmware: int
    buffer_count: int
    max_sectors: int
    sectors: int | None = None
    model: str | None = None
    serial: str | None = None

    @property
    def name(self) -> str:
        return f"e{self.shelf}.{self.slot}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.name
        data["size_bytes"] = None if self.sectors is None else self.sectors * 512
        return data


def identify_fields(page: bytes) -> tuple[int, str, str]:
    """(sectors, model, serial) from a 512-byte IDENTIFY DEVICE page, as the Linux aoe driver
    reads it: words 100-103 if LBA48 is supported (word 83 or 86, bit 10), else words 60-61."""
    if len(page) < 512:
        raise ValueError(f"IDENTIFY page is {len(page)} bytes, needs 512")
    words = struct.unpack_from("<256H", page)
    if (words[83] | words[86]) & (1 << 10):
        sectors = int.from_bytes(page[200:208], "little")
    else:
        sectors = words[60] | words[61] << 16
    return sectors, _ata_string(page, 27, 40), _ata_string(page, 10, 20)


def _ata_string(page: bytes, word: int, width: int) -> str:
    # ATA strings keep the first character of each pair in the high byte of a little-endian word.
    raw = page[word * 2 : word * 2 + width]
    swapped = bytes(b for pair in zip(raw[1::2], raw[0::2], strict=True) for b in pair)
    return swapped.decode("ascii", errors="replace").strip()


def probe(interface: str, timeout: float = 1.0) -> list[ProbedTarget]:
    """Every target that answers a broadcast Query Config on `interface` within `timeout`
    seconds, sorted by shelf, slot and MAC. Targets whose ACL excludes this host stay silent."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_AOE))
    except PermissionError:
        raise ProbeError("probing needs root (or CAP_NET_RAW) for an AF_PACKET socket") from None
    with sock:
        try:
            sock.bind((interface, ETHERTYPE_AOE))
        except OSError as exc:
            raise ProbeError(f"cannot probe on {interface!r}: {exc.strerror}") from None
        return _Probe(sock, timeout).run()


class _Probe:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.mac = sock.getsockname()[4]
        self.mac_text = ":".join(f"{b:02x}" for b in self.mac)
        self.tag = secrets.randbits(31)  # the Query Config's; IDENTIFY tags count up from it
        self.next_tag = self.tag + 1
        self.found: dict[tuple[str, int, int], ProbedTarget] = {}
        self.identifying: dict[int, tuple[str, int, int]] = {}  # tag -> key
        self.answered: set[tuple[str, int, int]] = set()

    def run(self) -> list[ProbedTarget]:
        query = AoE(major=BROADCAST_SHELF, minor=BROADCAST_SLOT, cmd=Command.QUERY_CONFIG)
        self._send("ff:ff:ff:ff:ff:ff", query / AoEQueryConfig(), self.tag)
        deadline = time.monotonic() + self.timeout
        self._receive_until(deadline)
        if self._pending():
            # Discovery is over; give IDENTIFYs sent late (or lost) one more chance.
            self._receive_until(time.monotonic() + _IDENTIFY_GRACE / 2)
            for tag, key in list(self.identifying.items()):
                if key not in self.answered:
                    self._identify(key, resend_of=tag)
            self._receive_until(time.monotonic() + _IDENTIFY_GRACE / 2)
        return sorted(self.found.values(), key=lambda t: (t.shelf, t.slot, t.mac))

    def _pending(self) -> bool:
        return any(key not in self.answered for key in self.identifying.values())

    def _receive_until(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                self._handle(self.sock.recv(65536))

    def _send(self, dst: str, aoe: AoE, tag: int) -> None:
        aoe.tag = tag
        self.sock.send(pad(Ether(dst=dst, src=self.mac_text, type=ETHERTYPE_AOE) / aoe))

    def _handle(self, data: bytes) -> None:
        frame = Ether(data)
        if AoE not in frame or frame.dst != self.mac_text:
            return
        header = frame[AoE]
        if not int(header.flags) & _FLAG_RESPONSE:
            return  # someone else's request (another initiator on the segment)
        key = (frame.src, int(header.major), int(header.minor))
        if header.cmd == Command.QUERY_CONFIG and header.tag == self.tag:
            if AoEQueryConfig in frame and key not in self.found and not _is_error(header):
                self._discovered(key, frame[AoEQueryConfig])
        elif (
            header.cmd == Command.ATA
            and self.identifying.get(int(header.tag)) == key
            and key not in self.answered
        ):
            self.answered.add(key)
            self._identified(key, header, frame)

    def _discovered(self, key: tuple[str, int, int], config: AoEQueryConfig) -> None:
        mac, shelf, slot = key
        self.found[key] = ProbedTarget(
            shelf=shelf,
            slot=slot,
            mac=mac,
            config_string=bytes(config.config_string or b"").decode("utf-8", errors="replace"),
            firmware=int(config.firmware),
            buffer_count=int(config.buffer_count),
            max_sectors=int(config.sector_count),
        )
        self._identify(key)

    def _identify(self, key: tuple[str, int, int], resend_of: int | None = None) -> None:
        mac, shelf, slot = key
        if resend_of is not None:
            del self.identifying[resend_of]
        tag, self.next_tag = self.next_tag, self.next_tag + 1
        self.identifying[tag] = key
        ata = AoEAta(sector_count=1, cmd_status=AtaCommand.IDENTIFY_DEVICE, lba=_IDENTIFY_LBA)
        self._send(mac, AoE(major=shelf, minor=slot, cmd=Command.ATA) / ata, tag)

    def _identified(self, key: tuple[str, int, int], header: AoE, frame: Ether) -> None:
        if _is_error(header) or AoEAta not in frame:
            return
        answer = frame[AoEAta]
        if int(answer.cmd_status) & STATUS_ERR:
            return
        try:
            sectors, model, serial = identify_fields(bytes(answer.payload))
        except ValueError:
            return
        self.found[key] = replace(self.found[key], sectors=sectors, model=model, serial=serial)


def _is_error(header: AoE) -> bool:
    return bool(int(header.flags) & _FLAG_ERROR)
