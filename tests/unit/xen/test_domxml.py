"""Unit tests for cloudctl.xen.domxml: both flavours and their boot modes checked against libvirt's
own domain schema (virt-xml-validate) and defined and started on libvirt's test:///default
driver; round trips through parse_domain; every DomainSpecError path; XML escaping."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudctl.xen.domxml import (
    METADATA_NS,
    Disk,
    DomainSpecError,
    InstanceSpec,
    Nic,
    ParsedDomain,
    domain_xml,
    parse_domain,
)

KERNEL = "/var/lib/cloudctl/profiles/base/vmlinuz"
INITRD = "/var/lib/cloudctl/profiles/base/initrd.img"
MAC = "52:54:00:12:34:56"
TRICKY_CMDLINE = 'console=ttyS0 msg="it\'s <ok> & fine" a=b&c quiet'


def make_spec(**changes: Any) -> InstanceSpec:
    fields: dict[str, Any] = {
        "name": "web-1",
        "uuid": "0b0d7d39-7b53-4a3c-9d43-3f7c2a6c5e01",
        "memory_mib": 128,
        "vcpus": 1,
        "flavour": "xen",
        "boot": "pvh",
        "kernel": KERNEL,
        "initrd": INITRD,
        "cmdline": "console=hvc0 ip=dhcp",
        "nics": (Nic("br-cloud", MAC),),
        "metadata": {"group": "web", "profile": "base", "instance": "web-1"},
    }
    fields.update(changes)
    return InstanceSpec(**fields)


def _case(name: str, **changes: Any) -> InstanceSpec:
    # Each case its own name and UUID, so all of them can be defined on one test driver.
    return make_spec(name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), **changes)


CASES: dict[str, InstanceSpec] = {
    "xen-pvh": _case(
        "xen-pvh",
        disks=(Disk("/dev/md/vol1", "xvda"), Disk("/var/lib/cloudctl/seed.img", "xvdb", True)),
    ),
    "xen-pvh-minimal": _case("xen-pvh-minimal", initrd=None, cmdline="", nics=(), metadata={}),
    "xen-hvm-kernel": _case("xen-hvm-kernel", boot="hvm", vcpus=2, memory_mib=512),
    "xen-hvm-pxe": _case(
        "xen-hvm-pxe",
        boot="hvm",
        kernel=None,
        initrd=None,
        cmdline="",
        network_boot=True,
        nics=(Nic("br-cloud", MAC, model="e1000"), Nic("br-storage", "52:54:00:12:34:57")),
    ),
    "qemu-hvm-kernel": _case(
        "qemu-hvm-kernel",
        flavour="qemu",
        boot="hvm",
        console_log="/var/log/cloudctl/qemu-hvm-kernel.console",
        disks=(Disk("/dev/md/vol1", "vda"), Disk("/var/lib/cloudctl/scratch.img", "vdb")),
    ),
    "qemu-shared-file": _case(
        "qemu-shared-file",
        flavour="qemu",
        boot="hvm",
        disks=(Disk("/srv/volumes/shared.img", "vda", shared=True),),
    ),
    "qemu-hvm-pxe": _case(
        "qemu-hvm-pxe",
        flavour="qemu",
        boot="hvm",
        kernel=None,
        initrd=None,
        cmdline="",
        network_boot=True,
    ),
    "qemu-pvh-as-kernel-boot": _case("qemu-pvh-as-kernel-boot", flavour="qemu", boot="pvh"),
    "qemu-minimal": _case(
        "qemu-minimal", flavour="qemu", boot="hvm", initrd=None, cmdline="", nics=()
    ),
}


@pytest.fixture(scope="session")
def validate_xml(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], None]:
    """Run libvirt's virt-xml-validate on a document; fail the test if it does not validate."""
    tool = shutil.which("virt-xml-validate")
    if tool is None:
        pytest.fail(
            "virt-xml-validate is not installed: it comes with Debian's libvirt-clients "
            "(scripts/test-packages.txt); the domain XML cannot be checked against libvirt's schema"
        )
    if shutil.which("xmllint") is None:
        # virt-xml-validate is a shell script around xmllint, which libvirt-clients does not pull.
        pytest.fail("virt-xml-validate needs xmllint: install Debian's libxml2-utils")
    directory = tmp_path_factory.mktemp("domxml")

    def validate(xml: str) -> None:
        path = directory / f"{uuid.uuid4()}.xml"
        path.write_text(xml)
        result = subprocess.run(
            [tool, str(path), "domain"], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            pytest.fail(
                f"libvirt's domain schema rejects the XML (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{xml}"
            )

    return validate


@pytest.fixture
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open("test:///default")
    try:
        yield connection
    finally:
        connection.close()


def _root(spec: InstanceSpec) -> ET.Element:
    return ET.fromstring(domain_xml(spec))


# --- schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_xml_validates_against_libvirt_schema(
    case: str, validate_xml: Callable[[str], None]
) -> None:
    validate_xml(domain_xml(CASES[case]))


def test_validator_rejects_invalid_xml(validate_xml: Callable[[str], None], tmp_path: Path) -> None:
    # Guards the test above: a validator that passed everything would make it worthless.
    broken = domain_xml(CASES["xen-pvh"]).replace(">xenpvh</type>", ">bogus</type>")
    with pytest.raises(pytest.fail.Exception, match="schema rejects"):
        validate_xml(broken)


# --- XML shape per flavour and boot mode --------------------------------------------------------


def test_xen_pvh_shape() -> None:
    root = _root(CASES["xen-pvh"])
    assert root.get("type") == "xen"
    os_type = root.find("os/type")
    assert os_type is not None
    assert (os_type.text, os_type.get("machine"), os_type.get("arch")) == (
        "xenpvh",
        "xenpvh",
        "x86_64",
    )
    assert root.findtext("os/kernel") == KERNEL
    assert root.findtext("os/initrd") == INITRD
    assert root.findtext("os/cmdline") == "console=hvc0 ip=dhcp"
    assert root.find("os/loader") is None
    assert root.find("os/boot") is None
    assert root.find("features") is None
    assert root.find("devices/serial") is None
    assert root.find("devices/console/target").attrib == {"type": "xen", "port": "0"}
    block, image = root.findall("devices/disk")
    assert (block.get("type"), block.find("driver").get("name")) == ("block", "phy")
    assert block.find("source").get("dev") == "/dev/md/vol1"
    assert block.find("target").attrib == {"dev": "xvda", "bus": "xen"}
    assert block.find("readonly") is None
    assert (image.get("type"), image.find("driver").get("name")) == ("file", "qemu")
    assert image.find("source").get("file") == "/var/lib/cloudctl/seed.img"
    assert image.find("readonly") is not None
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "br-cloud"
    assert nic.find("mac").get("address") == MAC
    assert nic.find("model") is None
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy",
        "restart",
        "destroy",
    ]


def test_xen_pvh_minimal_omits_empty_parts() -> None:
    root = _root(CASES["xen-pvh-minimal"])
    assert root.find("os/initrd") is None
    assert root.find("os/cmdline") is None
    assert root.find("devices/interface") is None
    assert root.find("devices/disk") is None
    marker = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert marker is not None and marker.attrib == {}


def test_xen_hvm_kernel_shape() -> None:
    root = _root(CASES["xen-hvm-kernel"])
    os_type = root.find("os/type")
    assert (os_type.text, os_type.get("machine")) == ("hvm", "xenfv")
    assert root.find("os/loader") is None
    assert root.findtext("os/kernel") == KERNEL
    assert root.find("os/boot") is None
    assert [f.tag for f in root.find("features")] == ["acpi", "apic", "pae"]
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/console/target").attrib == {"type": "serial", "port": "0"}


def test_xen_hvm_pxe_shape() -> None:
    root = _root(CASES["xen-hvm-pxe"])
    assert root.findtext("os/type") == "hvm"
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "network"
    first, second = root.findall("devices/interface")
    assert first.find("model").get("type") == "e1000"
    assert second.find("model") is None


def test_qemu_kernel_shape() -> None:
    root = _root(CASES["qemu-hvm-kernel"])
    assert root.get("type") == "qemu"
    os_type = root.find("os/type")
    assert (os_type.text, os_type.get("machine"), os_type.get("arch")) == ("hvm", "pc", "x86_64")
    assert root.findtext("os/kernel") == KERNEL
    assert root.findtext("os/initrd") == INITRD
    assert [f.tag for f in root.find("features")] == ["acpi", "apic"]
    assert root.find("devices/interface/model").get("type") == "virtio"
    serial = root.find("devices/serial")
    assert serial.get("type") == "file"
    assert serial.find("source").attrib == {
        "path": "/var/log/cloudctl/qemu-hvm-kernel.console",
        "append": "on",
    }
    assert root.find("devices/console").get("type") == "file"
    block, image = root.findall("devices/disk")
    assert block.find("driver").attrib == {
        "name": "qemu",
        "type": "raw",
        "cache": "none",
        "io": "native",
    }
    assert block.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert image.find("driver").attrib == {"name": "qemu", "type": "raw"}
    assert image.find("source").get("file") == "/var/lib/cloudctl/scratch.img"


def test_qemu_pxe_shape() -> None:
    root = _root(CASES["qemu-hvm-pxe"])
    assert root.find("os/kernel") is None
    assert root.find("os/boot").get("dev") == "network"
    assert root.find("devices/serial").get("type") == "pty"
    assert root.find("devices/disk") is None


def test_qemu_pvh_is_direct_kernel_boot() -> None:
    as_pvh = CASES["qemu-pvh-as-kernel-boot"]
    as_hvm = dataclasses.replace(as_pvh, boot="hvm")
    assert domain_xml(as_pvh) == domain_xml(as_hvm)


def test_metadata_element_carries_its_own_namespace() -> None:
    xml = domain_xml(CASES["xen-pvh"])
    assert f'<cloudctl:instance xmlns:cloudctl="{METADATA_NS}"' in xml
    assert "xmlns" not in xml.split("\n", 1)[0]  # not hoisted onto <domain>


# --- round trips -------------------------------------------------------------------------------


def _expected(spec: InstanceSpec) -> ParsedDomain:
    return ParsedDomain(
        name=spec.name,
        uuid=spec.uuid,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        flavour=spec.flavour,
        metadata=dict(spec.metadata),
    )


@pytest.mark.parametrize("case", CASES)
def test_round_trip_through_parse_domain(case: str) -> None:
    spec = CASES[case]
    assert parse_domain(domain_xml(spec)) == _expected(spec)


@pytest.mark.parametrize("case", CASES)
def test_defines_and_starts_on_libvirt_test_driver(case: str, conn: libvirt.virConnect) -> None:
    spec = CASES[case]
    # VALIDATE makes libvirt check the document against its schema itself, too.
    dom = conn.defineXMLFlags(domain_xml(spec), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        dom.create()
        state, max_kib, mem_kib, vcpus, _cpu_time = dom.info()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        assert (max_kib, mem_kib, vcpus) == (
            spec.memory_mib * 1024,
            spec.memory_mib * 1024,
            spec.vcpus,
        )
        assert dom.UUIDString() == spec.uuid
        reported = dom.XMLDesc()
        assert parse_domain(reported) == _expected(spec)
        assert ET.fromstring(reported).findtext("os/cmdline") == (spec.cmdline or None)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_parse_domain_of_foreign_domain_has_no_metadata() -> None:
    xml = """<domain type='kvm'><name>legacy</name>
      <uuid>6695EB01F6A44B8A8F5B6B7F1BC4E2A1</uuid>
      <memory>1048576</memory><vcpu placement='static' current='1'>4</vcpu>
      <metadata><other:x xmlns:other='https://example.invalid/x'/></metadata></domain>"""
    assert parse_domain(xml) == ParsedDomain(
        name="legacy",
        uuid="6695eb01-f6a4-4b8a-8f5b-6b7f1bc4e2a1",
        memory_mib=1024,
        vcpus=4,
        flavour="kvm",
        metadata=None,
    )


@pytest.mark.parametrize(
    ("memory", "mib"),
    [("<memory unit='GiB'>2</memory>", 2048), ("<memory unit='bytes'>268435456</memory>", 256)],
)
def test_parse_domain_memory_units(memory: str, mib: int) -> None:
    xml = (
        f"<domain type='qemu'><name>m</name><uuid>{uuid.uuid4()}</uuid>{memory}"
        "<vcpu>1</vcpu></domain>"
    )
    assert parse_domain(xml).memory_mib == mib


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<domain", "not well-formed"),
        ("<network><name>n</name></network>", "expected a <domain>"),
        ("<domain type='xen'><uuid>00000000-0000-0000-0000-000000000001</uuid></domain>", "<name>"),
        ("<domain type='xen'><name>n</name><uuid>nope</uuid></domain>", "malformed <uuid>"),
        (
            "<domain type='xen'><name>n</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
            "<memory unit='furlong'>1</memory><vcpu>1</vcpu></domain>",
            "unknown memory unit",
        ),
        (
            "<domain type='xen'><name>n</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
            "<memory>1024</memory><vcpu>x</vcpu></domain>",
            "non-numeric <vcpu>",
        ),
    ],
)
def test_parse_domain_errors(xml: str, message: str) -> None:
    with pytest.raises(DomainSpecError, match=message):
        parse_domain(xml)


# --- escaping ----------------------------------------------------------------------------------


def test_cmdline_and_metadata_are_escaped(conn: libvirt.virConnect) -> None:
    spec = _case(
        "escaping",
        flavour="qemu",
        boot="hvm",
        cmdline=TRICKY_CMDLINE,
        metadata={"profile": 'a "quoted" <name> & more'},
    )
    xml = domain_xml(spec)
    assert "&amp; fine" in xml and "&lt;ok&gt;" in xml and "a=b&amp;c" in xml
    assert "<ok>" not in xml
    root = ET.fromstring(xml)
    assert root.findtext("os/cmdline") == TRICKY_CMDLINE
    assert parse_domain(xml).metadata == {"profile": 'a "quoted" <name> & more'}
    dom = conn.defineXML(xml)
    try:
        reported = dom.XMLDesc()
    finally:
        dom.undefine()
    assert ET.fromstring(reported).findtext("os/cmdline") == TRICKY_CMDLINE
    assert parse_domain(reported).metadata == {"profile": 'a "quoted" <name> & more'}


# --- normalisation -----------------------------------------------------------------------------


def test_spec_normalises_uuid_and_mac_and_copies_metadata() -> None:
    metadata = {"group": "web"}
    spec = make_spec(
        uuid="0B0D7D397B534A3C9D433F7C2A6C5E01",
        nics=(Nic("br0", "52:54:00:AB:CD:EF"),),
        metadata=metadata,
    )
    metadata["group"] = "changed"
    assert spec.uuid == "0b0d7d39-7b53-4a3c-9d43-3f7c2a6c5e01"
    assert spec.nics[0].mac == "52:54:00:ab:cd:ef"
    assert spec.metadata == {"group": "web"}
    with pytest.raises(TypeError):
        spec.metadata["group"] = "x"  # type: ignore[index]
    assert hash(spec) == hash(make_spec(uuid=spec.uuid, nics=spec.nics, metadata={"group": "web"}))


# --- spec errors -------------------------------------------------------------------------------

_NO_KERNEL = {"kernel": None, "initrd": None, "cmdline": ""}

SPEC_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("name with space", {"name": "web 1"}, "name 'web 1' must be"),
    ("name too long", {"name": "a" * 65}, "must be 1-64"),
    ("empty name", {"name": ""}, "must be 1-64"),
    ("name with slash", {"name": "a/b"}, "must be 1-64"),
    ("name leading dash", {"name": "-web"}, "starting with a letter or digit"),
    ("name not str", {"name": 7}, "name must be a string"),
    ("bad uuid", {"uuid": "not-a-uuid"}, "is not a UUID"),
    ("memory too small", {"memory_mib": 15}, "memory_mib must be at least 16, got 15"),
    ("memory bool", {"memory_mib": True}, "memory_mib must be an integer"),
    ("memory float", {"memory_mib": 128.0}, "memory_mib must be an integer"),
    ("no vcpus", {"vcpus": 0}, "vcpus must be between 1 and 128, got 0"),
    ("too many vcpus", {"vcpus": 129}, "vcpus must be between 1 and 128, got 129"),
    ("bad flavour", {"flavour": "kvm"}, "flavour must be 'xen' or 'qemu'"),
    ("bad boot", {"boot": "pv"}, "boot must be 'pvh' or 'hvm'"),
    ("pvh without kernel", _NO_KERNEL, "boot='pvh' needs a kernel"),
    ("pvh network boot", {**_NO_KERNEL, "network_boot": True}, "network_boot .* needs boot='hvm'"),
    (
        "qemu pvh network boot",
        {**_NO_KERNEL, "flavour": "qemu", "network_boot": True},
        "needs boot='hvm'",
    ),
    ("xen hvm both", {"boot": "hvm", "network_boot": True}, "xen/hvm boots either"),
    (
        "qemu hvm both",
        {"flavour": "qemu", "boot": "hvm", "network_boot": True},
        "qemu/hvm boots either from a kernel or from the network",
    ),
    ("hvm nothing to boot", {**_NO_KERNEL, "boot": "hvm"}, "needs a kernel or network_boot"),
    (
        "pxe without nic",
        {**_NO_KERNEL, "boot": "hvm", "network_boot": True, "nics": ()},
        "needs at least one NIC",
    ),
    ("network_boot not bool", {"boot": "hvm", "network_boot": "yes"}, "must be a bool"),
    ("initrd without kernel", {"kernel": None, "cmdline": ""}, "initrd and cmdline need a kernel"),
    ("cmdline without kernel", {"kernel": None, "initrd": None}, "need a kernel"),
    ("relative kernel", {"kernel": "vmlinuz"}, "kernel must be an absolute file path"),
    ("relative initrd", {"initrd": "boot/initrd"}, "initrd must be an absolute"),
    (
        "cmdline newline",
        {"cmdline": "quiet\ninit=/bin/sh"},
        "the character '\\\\n', which it cannot carry",
    ),
    (
        "duplicate disk targets",
        {"disks": (Disk("/dev/md/vol1", "xvda"), Disk("/dev/md/vol2", "xvda"))},
        "duplicate disk targets: xvda",
    ),
    (
        "duplicate disk sources",
        {"disks": (Disk("/dev/md/vol1", "xvda"), Disk("/dev/md/vol1", "xvdb"))},
        "same disk source given twice: /dev/md/vol1",
    ),
    (
        "qemu target on xen",
        {"disks": (Disk("/dev/md/vol1", "vda"),)},
        "'vda' does not suit the xen",
    ),
    (
        "xen target on qemu",
        {"flavour": "qemu", "disks": (Disk("/dev/md/vol1", "xvda"),)},
        "'xvda' does not suit the qemu",
    ),
    ("disks as list", {"disks": [Disk("/dev/md/vol1", "xvda")]}, "disks must be a tuple of Disk"),
    ("nics as list", {"nics": [Nic("br0", MAC)]}, "nics must be a tuple of Nic"),
    (
        "duplicate macs",
        {"nics": (Nic("br0", MAC), Nic("br1", MAC.upper()))},
        "duplicate NIC MAC addresses: 52:54:00:12:34:56",
    ),
    ("pvh emulated nic", {"nics": (Nic("br0", MAC, "e1000"),)}, "PVH guest has no emulated"),
    (
        "console log on xen",
        {"console_log": "/var/log/x.console"},
        "console_log is for the qemu flavour",
    ),
    (
        "relative console log",
        {"flavour": "qemu", "console_log": "x.console"},
        "console_log must be an absolute",
    ),
    ("metadata not mapping", {"metadata": [("a", "b")]}, "metadata must be a mapping"),
    ("metadata bad key", {"metadata": {"Group": "x"}}, "metadata key 'Group'"),
    ("metadata xmlns key", {"metadata": {"xmlns": "x"}}, "not with 'xml'"),
    ("metadata value type", {"metadata": {"group": 3}}, "metadata\\['group'\\] must be a string"),
    ("metadata value long", {"metadata": {"group": "x" * 257}}, "at most 256"),
    ("metadata control char", {"metadata": {"group": "a\x00b"}}, "cannot carry"),
    (
        "metadata too many",
        {"metadata": {f"k{i}": "v" for i in range(33)}},
        "33 items; at most 32",
    ),
    ("bad on_crash", {"on_crash": "explode"}, "on_crash must be one of"),
    ("bad on_reboot", {"on_reboot": "reboot"}, "on_reboot must be one of"),
]


@pytest.mark.parametrize(
    ("changes", "message"),
    [pytest.param(changes, message, id=label) for label, changes, message in SPEC_ERRORS],
)
def test_spec_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DomainSpecError, match=message):
        make_spec(**changes)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Nic("br0", "52:54:00:zz:00:01"), "is not of the form", id="mac hex"),
        pytest.param(lambda: Nic("br0", "52:54:00:12:34"), "is not of the form", id="mac short"),
        pytest.param(lambda: Nic("br0", "01:00:5e:00:00:01"), "multicast", id="mac multicast"),
        pytest.param(lambda: Nic("bridge-name-too-long", MAC), "Linux interface", id="bridge long"),
        pytest.param(lambda: Nic("br 0", MAC), "Linux interface name", id="bridge space"),
        pytest.param(lambda: Nic("br0", MAC, model="vir tio"), "device model", id="model"),
        pytest.param(lambda: Disk("md/vol1", "xvda"), "absolute file path", id="disk relative"),
        pytest.param(lambda: Disk("/dev/md/", "xvda"), "absolute file path", id="disk dir"),
        pytest.param(lambda: Disk("/dev/md/vol1", "xvda", "yes"), "must be a bool", id="ro"),
    ],
)
def test_device_errors(build: Callable[[], object], message: str) -> None:
    with pytest.raises(DomainSpecError, match=message):
        build()


def test_errors_are_value_errors() -> None:
    # Callers that only know "bad input" (the API layer) can catch ValueError.
    assert issubclass(DomainSpecError, ValueError)


def test_shared_image_files_bypass_the_host_page_cache() -> None:
    (shared,) = _root(CASES["qemu-shared-file"]).iter("disk")
    assert shared.find("driver").get("cache") == "none"  # another host opens it after migrating
    private = [d for d in _root(CASES["qemu-hvm-kernel"]).iter("disk") if d.get("type") == "file"]
    assert "cache" not in private[0].find("driver").attrib  # O_DIRECT fails on tmpfs
