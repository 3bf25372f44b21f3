"""One instance spec -> libvirt domain XML (`domain_xml`), and libvirt's XMLDesc -> the few facts
reconciliation needs (`parse_domain`). Owns the spec's validation and the XML shape for both
flavours: Xen libxl (PVH, or HVM) and the lab's QEMU/TCG. No libvirt connection here.
"""

from __future__ import annotations

import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "METADATA_NS",
    "Disk",
    "DomainSpecError",
    "InstanceSpec",
    "Nic",
    "ParsedDomain",
    "domain_xml",
    "parse_domain",
]

METADATA_NS = "https://cloudctl.invalid/xmlns/instance/1"
METADATA_PREFIX = "cloudctl"

Flavour = Literal["xen", "qemu"]
BootMode = Literal["pvh", "hvm"]

MIN_MEMORY_MIB = 16
MAX_VCPUS = 128
MAX_METADATA_ITEMS = 32
MAX_METADATA_VALUE = 256

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# Linux interface names: at most 15 bytes, and no '/', ':' or whitespace.
_BRIDGE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_MODEL_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Attribute names on the metadata element: plain XML names, no namespace prefix.
_META_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Control characters (libvirt's fields are single-line) and what XML 1.0 cannot encode at all.
_NOT_XML_TEXT = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_DIGITS_RE = re.compile(r"[0-9]+")
_TARGET_RE = {"xen": re.compile(r"xvd[a-z]{1,3}"), "qemu": re.compile(r"vd[a-z]{1,3}")}

_LIFECYCLE = {
    "on_poweroff": ("destroy", "restart", "preserve", "rename-restart"),
    "on_reboot": ("destroy", "restart", "preserve", "rename-restart"),
    "on_crash": (
        "destroy",
        "restart",
        "preserve",
        "rename-restart",
        "coredump-destroy",
        "coredump-restart",
    ),
}

# libvirt reports <memory> in KiB, but accepts any of these units on input.
_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "KB": 1000,
    "k": 1024,
    "KiB": 1024,
    "MB": 1000**2,
    "M": 1024**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "G": 1024**3,
    "GiB": 1024**3,
    "TB": 1000**4,
    "T": 1024**4,
    "TiB": 1024**4,
}


class DomainSpecError(ValueError):
    """An instance spec libvirt would refuse or could not boot, or domain XML we cannot read."""


def _check_text(value: object, what: str, *, allow: str = "") -> str:
    """A string that can go into a domain XML field. ElementTree escapes markup but writes control
    characters and lone surrogates through unchanged, giving XML that libvirt cannot parse."""
    if not isinstance(value, str):
        raise DomainSpecError(f"{what} must be a string, not {type(value).__name__}")
    for match in _NOT_XML_TEXT.finditer(value):
        if match.group() not in allow:
            raise DomainSpecError(
                f"{what} contains the character {match.group()!r}, which it cannot carry: {value!r}"
            )
    return value


def _check_abs_path(value: object, what: str) -> str:
    path = _check_text(value, what)
    if not path.startswith("/") or path.endswith("/"):
        raise DomainSpecError(f"{what} must be an absolute file path, got {path!r}")
    return path


def _check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    # bool is an int subclass; True as a vCPU count is a caller bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise DomainSpecError(f"{what} must be an integer, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DomainSpecError(f"{what} must be {bound}, got {value}")
    return value


@dataclass(frozen=True)
class Nic:
    """A NIC on a host bridge. `model` None means the flavour's default: virtio-net for qemu;
    for Xen the PV netfront (PVH) or libxl's emulated NIC plus netfront (HVM)."""

    bridge: str
    mac: str
    model: str | None = None

    def __post_init__(self) -> None:
        bridge = _check_text(self.bridge, "nic bridge")
        if not _BRIDGE_RE.fullmatch(bridge) or bridge in (".", ".."):
            raise DomainSpecError(
                f"nic bridge {bridge!r} is not a Linux interface name "
                "(1-15 of letters, digits, '_', '-', '.')"
            )
        mac = _check_text(self.mac, "nic mac").lower()
        if not _MAC_RE.fullmatch(mac):
            raise DomainSpecError(f"nic mac {self.mac!r} is not of the form 52:54:00:12:34:56")
        if int(mac[:2], 16) & 1:
            raise DomainSpecError(f"nic mac {mac} is a multicast address; use a unicast one")
        # libvirt reports MACs in lower case; storing them so keeps spec and XMLDesc comparable.
        object.__setattr__(self, "mac", mac)
        if self.model is not None and not _MODEL_RE.fullmatch(_check_text(self.model, "nic model")):
            raise DomainSpecError(f"nic model {self.model!r} is not a device model name")


@dataclass(frozen=True)
class Disk:
    """A block device or file given to the guest whole. A source under /dev/ is a block device
    (an md volume over AoE, say); anything else is a raw image file."""

    source: str
    target: str
    readonly: bool = False
    # A file another host opens after a migration must bypass the host page cache too; the
    # default stays because O_DIRECT fails on tmpfs. Block devices always bypass it (qemu).
    shared: bool = False

    def __post_init__(self) -> None:
        _check_abs_path(self.source, "disk source")
        _check_text(self.target, "disk target")
        if not isinstance(self.readonly, bool):
            raise DomainSpecError(f"disk readonly must be a bool, got {self.readonly!r}")
        if not isinstance(self.shared, bool):
            raise DomainSpecError(f"disk shared must be a bool, got {self.shared!r}")

    @property
    def is_block(self) -> bool:
        return self.source.startswith("/dev/")


@dataclass(frozen=True)
class InstanceSpec:
    """What one instance should look like as a domain. Invalid specs cannot be built: every
    check runs in __post_init__ and raises DomainSpecError.

    Boot modes:
    - xen/pvh: the profile's kernel, initrd and cmdline loaded by Xen (kernel required).
    - xen/hvm and qemu/hvm: exactly one of a kernel (direct kernel boot) or network_boot (PXE
      through the NICs' option ROMs, in NIC order).
    - qemu/pvh: libvirt's QEMU driver has no PVH guest type, so the lab takes "pvh" for what it
      means to the instance -- boot the profile's kernel directly -- and writes the same XML as
      qemu/hvm with a kernel. The PVH rules (kernel required, no network boot) still apply, so
      a spec the lab accepts is one Xen accepts too.
    """

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    flavour: Flavour = "xen"
    boot: BootMode = "pvh"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    network_boot: bool = False
    nics: tuple[Nic, ...] = ()
    disks: tuple[Disk, ...] = ()
    console_log: str | None = None
    # Written as attributes of <cloudctl:instance/> so reconciliation can tell cloudctl's
    # domains (and their group/profile) from anything else defined on the host.
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"

    def __post_init__(self) -> None:
        name = _check_text(self.name, "name")
        if not _NAME_RE.fullmatch(name):
            raise DomainSpecError(
                f"name {name!r} must be 1-64 letters, digits, '-', '_' or '.', "
                "starting with a letter or digit"
            )
        try:
            canonical = str(uuidlib.UUID(_check_text(self.uuid, "uuid")))
        except ValueError:
            raise DomainSpecError(f"uuid {self.uuid!r} is not a UUID") from None
        object.__setattr__(self, "uuid", canonical)
        _check_int(self.memory_mib, "memory_mib", MIN_MEMORY_MIB)
        _check_int(self.vcpus, "vcpus", 1, MAX_VCPUS)
        if self.flavour not in ("xen", "qemu"):
            raise DomainSpecError(f"flavour must be 'xen' or 'qemu', got {self.flavour!r}")
        if self.boot not in ("pvh", "hvm"):
            raise DomainSpecError(f"boot must be 'pvh' or 'hvm', got {self.boot!r}")
        self._check_boot()
        self._check_devices()
        object.__setattr__(self, "metadata", _frozen_metadata(self.metadata))
        for attr, allowed in _LIFECYCLE.items():
            if getattr(self, attr) not in allowed:
                raise DomainSpecError(
                    f"{attr} must be one of {', '.join(allowed)}, got {getattr(self, attr)!r}"
                )

    def _check_boot(self) -> None:
        if self.kernel is not None:
            _check_abs_path(self.kernel, "kernel")
        if self.initrd is not None:
            _check_abs_path(self.initrd, "initrd")
        # The kernel command line is one line; tabs are the only control character that a
        # hand-written profile plausibly contains.
        _check_text(self.cmdline, "cmdline", allow="\t")
        if not isinstance(self.network_boot, bool):
            raise DomainSpecError(f"network_boot must be a bool, got {self.network_boot!r}")
        if self.kernel is None and (self.initrd is not None or self.cmdline):
            # Neither libxl nor QEMU accepts a ramdisk or a command line without a kernel, and
            # for Xen PV-style guests libvirt would quietly fall back to pygrub instead.
            raise DomainSpecError("initrd and cmdline need a kernel; set kernel too")
        if self.boot == "pvh":
            if self.network_boot:
                raise DomainSpecError(
                    "network_boot (PXE) needs boot='hvm': a PVH guest has no firmware to PXE "
                    "with; give it the profile's kernel and initrd instead"
                )
            if self.kernel is None:
                raise DomainSpecError("boot='pvh' needs a kernel (and usually an initrd)")
        elif self.network_boot and self.kernel is not None:
            raise DomainSpecError(
                f"{self.flavour}/hvm boots either from a kernel or from the network "
                "(network_boot), not both; drop one"
            )
        elif not self.network_boot and self.kernel is None:
            raise DomainSpecError(
                "boot='hvm' needs a kernel or network_boot=True: instances are diskless, "
                "nothing else is bootable"
            )
        if self.network_boot and not self.nics:
            raise DomainSpecError("network_boot needs at least one NIC to boot from")

    def _check_devices(self) -> None:
        for items, kind in ((self.nics, Nic), (self.disks, Disk)):
            if not isinstance(items, tuple) or not all(isinstance(i, kind) for i in items):
                raise DomainSpecError(
                    f"{kind.__name__.lower()}s must be a tuple of {kind.__name__}"
                )
        macs = [nic.mac for nic in self.nics]
        if len(set(macs)) != len(macs):
            raise DomainSpecError(f"duplicate NIC MAC addresses: {_dupes(macs)}")
        if self.flavour == "xen" and self.boot == "pvh":
            for nic in self.nics:
                if nic.model not in (None, "netfront"):
                    raise DomainSpecError(
                        f"nic model {nic.model!r}: a PVH guest has no emulated devices, "
                        "only netfront; leave model unset"
                    )
        targets = [disk.target for disk in self.disks]
        if len(set(targets)) != len(targets):
            raise DomainSpecError(f"duplicate disk targets: {_dupes(targets)}")
        sources = [disk.source for disk in self.disks]
        if len(set(sources)) != len(sources):
            raise DomainSpecError(f"the same disk source given twice: {_dupes(sources)}")
        pattern = _TARGET_RE[self.flavour]
        for target in targets:
            if not pattern.fullmatch(target):
                example = "xvda" if self.flavour == "xen" else "vda"
                raise DomainSpecError(
                    f"disk target {target!r} does not suit the {self.flavour} flavour "
                    f"(expected e.g. {example!r})"
                )
        if self.console_log is not None:
            if self.flavour != "qemu":
                raise DomainSpecError(
                    "console_log is for the qemu flavour; Xen guest consoles are logged by "
                    "xenconsoled on the host"
                )
            _check_abs_path(self.console_log, "console_log")


def _dupes(values: list[str]) -> str:
    return ", ".join(sorted({v for v in values if values.count(v) > 1}))


def _frozen_metadata(metadata: object) -> Mapping[str, str]:
    if not isinstance(metadata, Mapping):
        raise DomainSpecError(f"metadata must be a mapping, not {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise DomainSpecError(
            f"metadata has {len(metadata)} items; at most {MAX_METADATA_ITEMS} are kept"
        )
    for key, value in metadata.items():
        # Names starting with "xml" are reserved; "xmlns" would even declare a namespace.
        if not isinstance(key, str) or not _META_KEY_RE.fullmatch(key) or key.startswith("xml"):
            raise DomainSpecError(
                f"metadata key {key!r} must be 1-32 of lower-case letters, digits, '_', '-', "
                "starting with a letter and not with 'xml'"
            )
        _check_text(value, f"metadata[{key!r}]")
        if len(value) > MAX_METADATA_VALUE:
            raise DomainSpecError(
                f"metadata[{key!r}] is {len(value)} characters; at most {MAX_METADATA_VALUE}"
            )
    # A private copy: the caller's dict may change after the spec is built.
    return MappingProxyType(dict(metadata))


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(spec: InstanceSpec) -> str:
    """The libvirt domain XML for `spec`, for `virConnect.defineXML`."""
    root = ET.Element("domain", type=spec.flavour)
    _sub(root, "name", spec.name)
    _sub(root, "uuid", spec.uuid)
    metadata = _sub(root, "metadata")
    # ElementTree would hoist a registered namespace's declaration to <domain>; libvirt keeps
    # only the metadata subtree, so the declaration has to sit on the element itself.
    marker = _sub(metadata, f"{METADATA_PREFIX}:instance")
    marker.set(f"xmlns:{METADATA_PREFIX}", METADATA_NS)
    for key in sorted(spec.metadata):
        marker.set(key, spec.metadata[key])
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    _add_os(root, spec)
    if spec.flavour == "qemu":
        # ACPI lets `virsh shutdown` ask the guest politely (power button).
        features = _sub(root, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
    elif spec.boot == "hvm":
        # libxl turns these off for HVM unless they are listed; PVH takes libxl's defaults.
        features = _sub(root, "features")
        for name in ("acpi", "apic", "pae"):
            _sub(features, name)
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", spec.on_poweroff)
    _sub(root, "on_reboot", spec.on_reboot)
    _sub(root, "on_crash", spec.on_crash)
    devices = _sub(root, "devices")
    for disk in spec.disks:
        _add_disk(devices, spec, disk)
    for nic in spec.nics:
        _add_nic(devices, spec, nic)
    _add_console(devices, spec)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _add_os(root: ET.Element, spec: InstanceSpec) -> None:
    os_ = _sub(root, "os")
    if spec.flavour == "qemu":
        _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    elif spec.boot == "pvh":
        # The os type/machine pair libvirt 9's libxl driver reads as a PVH guest.
        _sub(os_, "type", "xenpvh", arch="x86_64", machine="xenpvh")
    else:
        # No <loader>: libxl then uses the hvmloader its Xen was built with, whose path
        # differs between distributions (/usr/lib/xen-4.17/boot/hvmloader on Debian).
        _sub(os_, "type", "hvm", arch="x86_64", machine="xenfv")
    if spec.kernel is not None:
        _sub(os_, "kernel", spec.kernel)
        if spec.initrd is not None:
            _sub(os_, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_, "cmdline", spec.cmdline)
    elif spec.network_boot:
        _sub(os_, "boot", dev="network")


def _add_disk(devices: ET.Element, spec: InstanceSpec, disk: Disk) -> None:
    element = _sub(devices, "disk", type="block" if disk.is_block else "file", device="disk")
    if spec.flavour == "xen":
        # phy: blkback on the host block device; qemu: the qdisk backend for image files.
        _sub(element, "driver", name="phy" if disk.is_block else "qemu")
        bus = "xen"
    elif disk.is_block:
        # Another host opens the same md volume after a migration or failover; bypassing the
        # host page cache keeps it from serving pages the guest has since overwritten.
        _sub(element, "driver", name="qemu", type="raw", cache="none", io="native")
        bus = "virtio"
    elif disk.shared:
        _sub(element, "driver", name="qemu", type="raw", cache="none")
        bus = "virtio"
    else:
        # Default cache: O_DIRECT (cache='none') fails for image files on tmpfs (Linux < 6.6).
        _sub(element, "driver", name="qemu", type="raw")
        bus = "virtio"
    if disk.is_block:
        _sub(element, "source", dev=disk.source)
    else:
        _sub(element, "source", file=disk.source)
    _sub(element, "target", dev=disk.target, bus=bus)
    if disk.readonly:
        _sub(element, "readonly")


def _add_nic(devices: ET.Element, spec: InstanceSpec, nic: Nic) -> None:
    element = _sub(devices, "interface", type="bridge")
    _sub(element, "mac", address=nic.mac)
    _sub(element, "source", bridge=nic.bridge)
    model = nic.model if nic.model is not None else ("virtio" if spec.flavour == "qemu" else None)
    if model is not None:
        _sub(element, "model", type=model)


def _add_console(devices: ET.Element, spec: InstanceSpec) -> None:
    if spec.flavour == "xen" and spec.boot == "pvh":
        # A PVH guest has no UART: its console is the PV console (hvc0).
        console = _sub(devices, "console", type="pty")
        _sub(console, "target", type="xen", port="0")
        return
    if spec.console_log is not None:
        serial = _sub(devices, "serial", type="file")
        # append: a restarted guest adds to the log instead of wiping the previous boot's.
        _sub(serial, "source", path=spec.console_log, append="on")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="file")
        _sub(console, "source", path=spec.console_log, append="on")
    else:
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


@dataclass(frozen=True)
class ParsedDomain:
    """What reconciliation compares between libvirt's view of a domain and the instance spec.
    `flavour` is the domain type attribute as libvirt reports it ("xen", "qemu", "kvm", ...);
    `metadata` is None for domains cloudctl did not write."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    flavour: str
    metadata: Mapping[str, str] | None = field(default=None, hash=False)


def parse_domain(xml: str) -> ParsedDomain:
    """Read libvirt's XMLDesc (or our own `domain_xml`) back into a ParsedDomain."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise DomainSpecError(f"domain XML is not well-formed: {exc}") from None
    if root.tag != "domain":
        raise DomainSpecError(f"expected a <domain> document, got <{root.tag}>")
    name = _required_text(root, "name")
    try:
        uuid = str(uuidlib.UUID(_required_text(root, "uuid")))
    except ValueError:
        raise DomainSpecError(f"domain {name!r} has a malformed <uuid>") from None
    memory = root.find("memory")
    if memory is None or not _DIGITS_RE.fullmatch((memory.text or "").strip()):
        raise DomainSpecError(f"domain {name!r} has no numeric <memory>")
    unit = memory.get("unit", "KiB")
    if unit not in _UNIT_BYTES:
        raise DomainSpecError(f"domain {name!r}: unknown memory unit {unit!r}")
    memory_mib = int((memory.text or "").strip()) * _UNIT_BYTES[unit] // 1024**2
    vcpus_text = _required_text(root, "vcpu")
    if not _DIGITS_RE.fullmatch(vcpus_text):
        raise DomainSpecError(f"domain {name!r} has a non-numeric <vcpu>: {vcpus_text!r}")
    marker = root.find(f"metadata/{{{METADATA_NS}}}instance")
    metadata = None if marker is None else MappingProxyType(dict(marker.attrib))
    return ParsedDomain(
        name=name,
        uuid=uuid,
        memory_mib=memory_mib,
        vcpus=int(vcpus_text),
        flavour=root.get("type", ""),
        metadata=metadata,
    )


def _required_text(root: ET.Element, tag: str) -> str:
    element = root.find(tag)
    if element is None or not (element.text or "").strip():
        raise DomainSpecError(f"domain XML has no <{tag}>")
    return (element.text or "").strip()
