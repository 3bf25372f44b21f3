"""Boot-method policy as data: which boot program a PXE/HTTP-boot client is offered.

Owns the table mapping client architecture (option 93) and vendor class to a program slot, and
`choose_boot`, a pure function of a decoded request and the node's `BootOffer`. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum

from cloudctl.pxe.dhcp.codec import FILE_SIZE, DhcpMessage
from cloudctl.pxe.dhcp.options import (
    IPXE_NO_PXEDHCP,
    DhcpCodecError,
    OptionCode,
    encode_text,
)

IPXE_USER_CLASS = b"iPXE"
HTTP_CLIENT_VENDOR_CLASS = b"HTTPClient"
# RFC 4578 section 2.1: a client that sends no option 93 is a legacy x86 BIOS PXE ROM.
ARCH_WHEN_ABSENT = 0


class ArchCode(IntEnum):
    """Option 93 values we boot (IANA "Processor Architecture Types")."""

    BIOS_X86 = 0
    EFI_IA32 = 6
    EFI_BC = 7  # what x86-64 UEFI firmware actually sends, despite the RFC 4578 name
    EFI_X86_64 = 9
    EFI_X86_64_HTTP = 16


class ProgramSlot(Enum):
    """Which of the node's boot programs a boot method hands out."""

    BIOS = "bios_program"
    UEFI_X64 = "uefi_program"
    UEFI_IA32 = "uefi_ia32_program"
    HTTP_BOOT = "http_boot_program"


@dataclass(frozen=True)
class BootProgram:
    """A boot file name (TFTP path, or URL for HTTP boot) and whether it is an iPXE build.

    `is_ipxe` matters for the second DHCP round: a client already running iPXE that would be
    handed iPXE again gets the node's iPXE script URL instead, which breaks the chainload loop.
    """

    path: str
    is_ipxe: bool


UNDIONLY_KPXE = BootProgram("undionly.kpxe", is_ipxe=True)
PXELINUX_0 = BootProgram("pxelinux.0", is_ipxe=False)
SNPONLY_EFI = BootProgram("snponly.efi", is_ipxe=True)
IPXE_EFI = BootProgram("ipxe.efi", is_ipxe=True)


@dataclass(frozen=True)
class BootOffer:
    """What the node's profile lets us offer; '{mac}' in paths is replaced by the client's MAC.

    A slot left at None is not offered: clients that need it get NoBootMethod.
    """

    ipxe_script_url: str
    bios_program: BootProgram | None = UNDIONLY_KPXE
    uefi_program: BootProgram | None = SNPONLY_EFI
    uefi_ia32_program: BootProgram | None = None  # needs a 32-bit EFI build; none by default
    http_boot_program: BootProgram | None = None  # path is a URL, e.g. http://srv/ipxe.efi

    def program_for(self, slot: ProgramSlot) -> BootProgram | None:
        return getattr(self, slot.value)


@dataclass(frozen=True)
class BootMethod:
    """One row of the boot table: the architectures it serves and how to answer them."""

    name: str
    arch_codes: frozenset[int]
    slot: ProgramSlot
    # The request's option 60 must start with this (b"" matches anything, including no option 60).
    vendor_class_prefix: bytes = b""
    # Option 60 to put in the reply; UEFI HTTP boot ignores offers without "HTTPClient".
    reply_vendor_class: bytes | None = None

    def serves(self, arch_code: int, vendor_class: bytes) -> bool:
        return arch_code in self.arch_codes and vendor_class.startswith(self.vendor_class_prefix)


BOOT_METHODS: tuple[BootMethod, ...] = (
    BootMethod("bios-pxe", frozenset({ArchCode.BIOS_X86}), ProgramSlot.BIOS),
    BootMethod("uefi-ia32-pxe", frozenset({ArchCode.EFI_IA32}), ProgramSlot.UEFI_IA32),
    BootMethod(
        "uefi-x64-pxe", frozenset({ArchCode.EFI_BC, ArchCode.EFI_X86_64}), ProgramSlot.UEFI_X64
    ),
    BootMethod(
        "uefi-x64-http",
        frozenset({ArchCode.EFI_X86_64_HTTP}),
        ProgramSlot.HTTP_BOOT,
        vendor_class_prefix=HTTP_CLIENT_VENDOR_CLASS,
        reply_vendor_class=HTTP_CLIENT_VENDOR_CLASS,
    ),
)


@dataclass(frozen=True)
class BootChoice:
    """What to put in the reply: boot file, vendor class echo, and whether the client is iPXE."""

    method: BootMethod
    arch_code: int
    boot_file: str  # option 67, and the BOOTP file field when it fits
    client_is_ipxe: bool

    @property
    def reply_vendor_class(self) -> bytes | None:
        return self.method.reply_vendor_class

    @property
    def file_field(self) -> bytes:
        """Value for the BOOTP `file` field; empty when the name only fits in option 67."""
        encoded = encode_text(self.boot_file)
        # Keep one byte for the NUL that C readers of the 128-byte field rely on.
        return encoded if len(encoded) < FILE_SIZE else b""

    def reply_options(self) -> tuple[tuple[int, bytes], ...]:
        """Options to add to the OFFER/ACK: 60 for HTTP boot, 67, and 175 for iPXE clients.

        iPXE clients get 175 with sub-option 176 = 1 so they do not wait ~3 s for ProxyDHCP.
        """
        options: list[tuple[int, bytes]] = []
        if self.reply_vendor_class is not None:
            options.append((OptionCode.VENDOR_CLASS_ID, self.reply_vendor_class))
        options.append((OptionCode.BOOTFILE_NAME, encode_text(self.boot_file)))
        if self.client_is_ipxe:
            options.append((OptionCode.IPXE_ENCAP, IPXE_NO_PXEDHCP))
        return tuple(options)


@dataclass(frozen=True)
class NoBootMethod:
    """Nothing to offer this client (unknown architecture, slot not configured, bad option 93)."""

    reason: str


def is_ipxe_client(request: DhcpMessage) -> bool:
    """iPXE says so with user class "iPXE" (77) or by sending its encapsulated options (175)."""
    if OptionCode.IPXE_ENCAP in request.options:
        return True
    return IPXE_USER_CLASS in (request.user_classes or ())


def choose_boot(
    request: DhcpMessage,
    offer: BootOffer,
    methods: Iterable[BootMethod] = BOOT_METHODS,
) -> BootChoice | NoBootMethod:
    """Pick the boot file for `request` from `offer`; never raises for a bad request.

    The client's architectures are tried in the order it listed them; the first one a method
    serves with a configured program wins.
    """
    try:
        arch_codes = request.client_architectures or (ARCH_WHEN_ABSENT,)
    except DhcpCodecError as err:
        return NoBootMethod(f"cannot read the client architecture: {err}")
    vendor_class = request.vendor_class_id or b""
    methods = tuple(methods)
    unconfigured: list[str] = []
    for arch_code in arch_codes:
        for method in methods:
            if not method.serves(arch_code, vendor_class):
                continue
            program = offer.program_for(method.slot)
            if program is None:
                unconfigured.append(f"{method.name} (arch {arch_code}) has no {method.slot.value}")
                continue
            return _choice(request, offer, method, arch_code, program)
    if unconfigured:
        return NoBootMethod("boot method not configured: " + "; ".join(unconfigured))
    return NoBootMethod(
        f"no boot method for client architecture {list(arch_codes)} "
        f"with vendor class {vendor_class!r}"
    )


def _choice(
    request: DhcpMessage,
    offer: BootOffer,
    method: BootMethod,
    arch_code: int,
    program: BootProgram,
) -> BootChoice:
    client_is_ipxe = is_ipxe_client(request)
    # Handing iPXE to iPXE would loop forever: give it the script that boots the node instead.
    path = offer.ipxe_script_url if client_is_ipxe and program.is_ipxe else program.path
    return BootChoice(
        method=method,
        arch_code=arch_code,
        boot_file=path.replace("{mac}", request.mac),
        client_is_ipxe=client_is_ipxe,
    )
