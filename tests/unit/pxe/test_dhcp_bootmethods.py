"""Unit tests for cloudctl.pxe.dhcp.bootmethods: every architecture in the table, the iPXE
second round, UEFI HTTP boot, and the no-boot-method outcomes."""

from __future__ import annotations

import pytest

from cloudctl.pxe.dhcp.bootmethods import (
    BOOT_METHODS,
    IPXE_EFI,
    PXELINUX_0,
    SNPONLY_EFI,
    UNDIONLY_KPXE,
    ArchCode,
    BootChoice,
    BootMethod,
    BootOffer,
    BootProgram,
    NoBootMethod,
    ProgramSlot,
    choose_boot,
    is_ipxe_client,
)
from cloudctl.pxe.dhcp.codec import (
    DhcpMessage,
    MessageType,
    OptionCode,
    chaddr_for_mac,
    decode,
    encode,
    reply_to,
)
from cloudctl.pxe.dhcp.options import (
    IPXE_NO_PXEDHCP,
    encode_client_architectures,
    encode_encapsulated,
    encode_u8,
    encode_user_classes,
)

from .test_dhcp_codec import DHCLIENT_DISCOVER, IPXE_DISCOVER

MAC = "52:54:00:12:34:56"
SCRIPT_URL = "http://10.0.0.1:8080/boot/ipxe/{mac}"
NODE_SCRIPT = f"http://10.0.0.1:8080/boot/ipxe/{MAC}"
HTTP_BOOT = BootProgram("http://10.0.0.1:8080/boot/ipxe.efi", is_ipxe=True)
I386_SNPONLY = BootProgram("i386/snponly.efi", is_ipxe=True)
DEFAULT_OFFER = BootOffer(ipxe_script_url=SCRIPT_URL)
FULL_OFFER = BootOffer(
    ipxe_script_url=SCRIPT_URL, uefi_ia32_program=I386_SNPONLY, http_boot_program=HTTP_BOOT
)


def discover(
    arch_codes: list[int] | None = None,
    vendor_class: bytes | None = None,
    user_class: bytes | None = None,
    ipxe_encap: bytes | None = None,
) -> DhcpMessage:
    """A DISCOVER as a firmware would send it, passed through the wire to be realistic."""
    options = {OptionCode.MESSAGE_TYPE: encode_u8(MessageType.DHCPDISCOVER)}
    if arch_codes is not None:
        options[OptionCode.CLIENT_ARCH] = encode_client_architectures(arch_codes)
    if vendor_class is not None:
        options[OptionCode.VENDOR_CLASS_ID] = vendor_class
    if user_class is not None:
        options[OptionCode.USER_CLASS] = user_class
    if ipxe_encap is not None:
        options[OptionCode.IPXE_ENCAP] = ipxe_encap
    return decode(encode(DhcpMessage(chaddr=chaddr_for_mac(MAC), options=options)))


def pxe_vendor(arch: int) -> bytes:
    return f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()


def chosen(request: DhcpMessage, offer: BootOffer = FULL_OFFER) -> BootChoice:
    choice = choose_boot(request, offer)
    assert isinstance(choice, BootChoice), choice
    return choice


# --- first round: firmware PXE ROMs ---


@pytest.mark.parametrize(
    ("arch", "method", "boot_file"),
    [
        (ArchCode.BIOS_X86, "bios-pxe", "undionly.kpxe"),
        (ArchCode.EFI_IA32, "uefi-ia32-pxe", "i386/snponly.efi"),
        (ArchCode.EFI_BC, "uefi-x64-pxe", "snponly.efi"),
        (ArchCode.EFI_X86_64, "uefi-x64-pxe", "snponly.efi"),
    ],
)
def test_pxe_rom_gets_the_program_for_its_architecture(
    arch: int, method: str, boot_file: str
) -> None:
    choice = chosen(discover([arch], vendor_class=pxe_vendor(arch)))
    assert choice.method.name == method
    assert choice.arch_code == arch
    assert choice.boot_file == boot_file
    assert choice.file_field == boot_file.encode()
    assert choice.reply_vendor_class is None
    assert choice.client_is_ipxe is False
    assert choice.reply_options() == ((OptionCode.BOOTFILE_NAME, boot_file.encode()),)


def test_no_option_93_is_treated_as_bios() -> None:
    choice = chosen(discover(None, vendor_class=b"PXEClient"))
    assert (choice.method.name, choice.arch_code, choice.boot_file) == (
        "bios-pxe",
        0,
        "undionly.kpxe",
    )
    # A plain OS client without option 93 is BIOS too; the DHCP server decides whether to offer.
    assert chosen(decode(DHCLIENT_DISCOVER)).boot_file == "undionly.kpxe"


def test_profile_alternatives_pxelinux_and_ipxe_efi() -> None:
    offer = BootOffer(ipxe_script_url=SCRIPT_URL, bios_program=PXELINUX_0, uefi_program=IPXE_EFI)
    assert chosen(discover([0]), offer).boot_file == "pxelinux.0"
    assert chosen(discover([7]), offer).boot_file == "ipxe.efi"


def test_client_architectures_are_tried_in_the_clients_order() -> None:
    # arch 11 (ARM64 UEFI) is not in the table, so the next listed one is used.
    choice = chosen(discover([11, 9, 0]))
    assert (choice.arch_code, choice.method.name) == (9, "uefi-x64-pxe")


# --- second round: the client is already iPXE ---


@pytest.mark.parametrize(
    "request_",
    [
        decode(IPXE_DISCOVER),  # qemu's ROM: bare user class "iPXE" and option 175
        discover([0], user_class=b"iPXE"),  # bare user class only
        discover([0], user_class=encode_user_classes([b"iPXE"])),  # RFC 3004 form
        discover([0], user_class=encode_user_classes([b"other", b"iPXE"])),
        discover([0], ipxe_encap=encode_encapsulated({19: b"\x01"})),  # option 175 only
    ],
)
def test_ipxe_client_gets_the_script_url(request_: DhcpMessage) -> None:
    assert is_ipxe_client(request_)
    choice = chosen(request_)
    assert choice.boot_file == NODE_SCRIPT
    assert choice.client_is_ipxe is True
    assert choice.reply_options() == (
        (OptionCode.BOOTFILE_NAME, NODE_SCRIPT.encode()),
        (OptionCode.IPXE_ENCAP, IPXE_NO_PXEDHCP),
    )


@pytest.mark.parametrize("arch", [ArchCode.EFI_BC, ArchCode.EFI_X86_64, ArchCode.EFI_IA32])
def test_ipxe_efi_client_gets_the_script_url(arch: int) -> None:
    choice = chosen(discover([arch], user_class=b"iPXE"))
    assert choice.boot_file == NODE_SCRIPT


def test_ipxe_rom_with_pxelinux_profile_gets_pxelinux() -> None:
    # iPXE -> pxelinux.0 is a supported chain (LAB-FACTS) and cannot loop: no script URL.
    offer = BootOffer(ipxe_script_url=SCRIPT_URL, bios_program=PXELINUX_0)
    choice = chosen(decode(IPXE_DISCOVER), offer)
    assert choice.boot_file == "pxelinux.0"
    assert choice.client_is_ipxe is True  # still told not to wait for ProxyDHCP
    assert (OptionCode.IPXE_ENCAP, IPXE_NO_PXEDHCP) in choice.reply_options()


def test_non_ipxe_user_classes_are_not_ipxe() -> None:
    assert not is_ipxe_client(discover([0], user_class=b"gPXE"))
    assert not is_ipxe_client(discover([0], user_class=encode_user_classes([b"iPXE2"])))
    assert not is_ipxe_client(discover([0]))


def test_script_url_without_placeholder_is_used_as_is() -> None:
    offer = BootOffer(ipxe_script_url="http://10.0.0.1/boot.ipxe")
    assert chosen(discover([0], user_class=b"iPXE"), offer).boot_file == "http://10.0.0.1/boot.ipxe"


def test_long_script_url_only_goes_in_option_67() -> None:
    offer = BootOffer(ipxe_script_url="http://10.0.0.1/" + "x" * 200)
    choice = chosen(discover([0], user_class=b"iPXE"), offer)
    assert choice.file_field == b""
    assert dict(choice.reply_options())[OptionCode.BOOTFILE_NAME] == choice.boot_file.encode()


# --- UEFI HTTP boot ---


def test_http_boot_gets_url_and_httpclient_vendor_class() -> None:
    request = discover([16], vendor_class=b"HTTPClient:Arch:00016:UNDI:003001")
    choice = chosen(request)
    assert choice.method.name == "uefi-x64-http"
    assert choice.boot_file == "http://10.0.0.1:8080/boot/ipxe.efi"
    assert choice.reply_vendor_class == b"HTTPClient"
    assert choice.client_is_ipxe is False
    assert choice.reply_options() == (
        (OptionCode.VENDOR_CLASS_ID, b"HTTPClient"),
        (OptionCode.BOOTFILE_NAME, b"http://10.0.0.1:8080/boot/ipxe.efi"),
    )
    offer = reply_to(request, MessageType.DHCPOFFER, options=choice.reply_options())
    echoed = decode(encode(offer))
    assert echoed.vendor_class_id == b"HTTPClient"
    assert echoed.bootfile_name == "http://10.0.0.1:8080/boot/ipxe.efi"


def test_http_boot_url_may_name_the_node() -> None:
    offer = BootOffer(
        ipxe_script_url=SCRIPT_URL,
        http_boot_program=BootProgram("http://10.0.0.1/efi/{mac}/ipxe.efi", is_ipxe=True),
    )
    choice = chosen(discover([16], vendor_class=b"HTTPClient"), offer)
    assert choice.boot_file == f"http://10.0.0.1/efi/{MAC}/ipxe.efi"


# --- nothing to offer ---


def test_unknown_architecture_gets_no_boot_method() -> None:
    outcome = choose_boot(discover([11], vendor_class=pxe_vendor(11)), FULL_OFFER)
    assert outcome == NoBootMethod(
        "no boot method for client architecture [11] with vendor class "
        "b'PXEClient:Arch:00011:UNDI:003016'"
    )


def test_arch_16_without_httpclient_gets_no_boot_method() -> None:
    outcome = choose_boot(discover([16], vendor_class=b"PXEClient"), FULL_OFFER)
    assert isinstance(outcome, NoBootMethod)
    assert "architecture [16]" in outcome.reason


@pytest.mark.parametrize(
    ("request_", "missing"),
    [
        (discover([16], vendor_class=b"HTTPClient"), "uefi-x64-http (arch 16) has no http_boot"),
        (discover([6]), "uefi-ia32-pxe (arch 6) has no uefi_ia32_program"),
    ],
)
def test_unconfigured_slot_gets_no_boot_method(request_: DhcpMessage, missing: str) -> None:
    outcome = choose_boot(request_, DEFAULT_OFFER)
    assert isinstance(outcome, NoBootMethod)
    assert outcome.reason.startswith("boot method not configured: ")
    assert missing in outcome.reason


def test_disabled_bios_slot_gets_no_boot_method() -> None:
    offer = BootOffer(ipxe_script_url=SCRIPT_URL, bios_program=None)
    assert isinstance(choose_boot(discover([0]), offer), NoBootMethod)


@pytest.mark.parametrize("raw", [b"\x00", b"", b"\x00\x07\x00"])
def test_malformed_option_93_gets_no_boot_method(raw: bytes) -> None:
    request = DhcpMessage(options={OptionCode.CLIENT_ARCH: raw})
    outcome = choose_boot(request, FULL_OFFER)
    assert isinstance(outcome, NoBootMethod)
    assert outcome.reason.startswith("cannot read the client architecture: bad length: option 93")


# --- the table itself ---


def test_table_is_unambiguous_and_covers_the_documented_architectures() -> None:
    names = [method.name for method in BOOT_METHODS]
    assert len(names) == len(set(names))
    covered = sorted(code for method in BOOT_METHODS for code in method.arch_codes)
    assert covered == [0, 6, 7, 9, 16]  # each code in exactly one row
    assert {method.slot for method in BOOT_METHODS} == set(ProgramSlot)


def test_custom_table_is_honoured() -> None:
    uefi_only = tuple(method for method in BOOT_METHODS if method.slot is not ProgramSlot.BIOS)
    assert isinstance(choose_boot(discover([0]), DEFAULT_OFFER, methods=uefi_only), NoBootMethod)
    http_any_vendor = BootMethod("http-any", frozenset({16}), ProgramSlot.HTTP_BOOT)
    choice = choose_boot(discover([16]), FULL_OFFER, methods=(http_any_vendor,))
    assert isinstance(choice, BootChoice)
    assert choice.method is http_any_vendor
    assert choice.reply_vendor_class is None


def test_well_known_programs() -> None:
    assert [p.is_ipxe for p in (UNDIONLY_KPXE, SNPONLY_EFI, IPXE_EFI, PXELINUX_0)] == [
        True,
        True,
        True,
        False,
    ]
