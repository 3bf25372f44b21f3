"""Per-node boot configuration, rendered on request: iPXE scripts and pxelinux configs.

Pure: a BootTarget (who asks, what its profile boots) in, text out. Nothing is written to
disk, so a change to a node or a profile shows at the node's next boot with no regeneration.
Xen boots as multiboot: iPXE `kernel xen` + `module` lines, or pxelinux's mboot.c32.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# {storage}: the md RAID1 kernel arguments (cloudctl.md=..., cloudctl.aoe_wait=...) for the
# mirrored volumes assigned to the booting node; write root=/dev/md/VOLUME yourself.
PLACEHOLDERS = ("name", "mac", "ip", "server", "domain", "gateway", "netmask", "role", "storage")
# iPXE packs every multiboot command line (each "URL args\0") into one 512-byte buffer and
# silently cuts what does not fit (MB_MAX_CMDLINE in its multiboot.c).
IPXE_MULTIBOOT_CMDLINE_BYTES = 512
DEFAULT_BIOS_PROGRAM = "undionly.kpxe"
BIOS_PROGRAMS = ("undionly.kpxe", "pxelinux.0")
DEFAULT_CMDLINE = "console=tty0 console=ttyS0,115200"


class RenderError(ValueError):
    """A profile cannot be rendered (unknown placeholder, bad characters); says which."""


def check_template(text: str, what: str) -> str:
    """Refuse placeholders we do not fill and characters that would break a config line."""
    if "\n" in text or "\r" in text or "\0" in text:
        raise RenderError(f"{what} must be one line without control characters")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as exc:
        raise RenderError(f"{what}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for field in fields:
        if field not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise RenderError(f"{what}: unknown placeholder {{{field}}}; known: {known}")
    return text


@dataclass(frozen=True)
class BootTarget:
    """Everything one node's boot config depends on."""

    name: str
    mac: str
    ip: str
    role: str
    server: str
    http_port: int
    domain: str
    gateway: str
    netmask: str
    image: str | None
    multiboot: bool
    cmdline: str
    hypervisor_args: str
    storage: str = ""

    def fill(self, template: str) -> str:
        values = {key: getattr(self, key) for key in PLACEHOLDERS}
        return template.format_map(values)

    def image_path(self, part: str) -> str:
        return f"images/{self.image}/{part}"

    @property
    def http_base(self) -> str:
        return f"http://{self.server}:{self.http_port}"


def multiboot_cmdline_bytes(target: BootTarget) -> int:
    """Bytes iPXE's multiboot loader needs for the hypervisor's and modules' command lines."""
    base = target.http_base
    lines = [
        f"{base}/{target.image_path('hypervisor')} {target.fill(target.hypervisor_args)}",
        f"{base}/{target.image_path('kernel')} {target.fill(target.cmdline)}",
        f"{base}/{target.image_path('initrd')}",
    ]
    return sum(len(line.encode()) + 1 for line in lines)


def check_multiboot_fits(target: BootTarget) -> None:
    """Refuse a Xen profile whose command lines iPXE would cut short without a word."""
    needed = multiboot_cmdline_bytes(target)
    if needed > IPXE_MULTIBOOT_CMDLINE_BYTES:
        raise RenderError(
            f"the Xen and dom0 command lines need {needed} bytes with their URLs, but iPXE "
            f"passes at most {IPXE_MULTIBOOT_CMDLINE_BYTES} to a multiboot kernel and would "
            "cut the rest: shorten --cmdline/--hypervisor-args, or boot this role with "
            "--bios-program pxelinux.0 (mboot.c32 has no such limit)"
        )


def ipxe_script(target: BootTarget) -> str:
    """The iPXE script: kernel + initrd over HTTP, or Xen with dom0 kernel and initrd as modules."""
    if target.image is None:
        return (
            "#!ipxe\n"
            f"echo cloudctl: no boot image for role {target.role} ({target.name} {target.mac})\n"
            "echo set one with: cloudctl profile set ROLE --image NAME\n"
            "sleep 10\n"
            "exit 1\n"
        )
    base, cmdline = target.http_base, target.fill(target.cmdline)
    if target.multiboot:
        try:
            check_multiboot_fits(target)
        except RenderError as exc:
            return f"#!ipxe\necho cloudctl: {exc}\nsleep 30\nexit 1\n"
        hypervisor_args = target.fill(target.hypervisor_args)
        return (
            "#!ipxe\n"
            f"kernel {base}/{target.image_path('hypervisor')} {hypervisor_args}\n"
            f"module {base}/{target.image_path('kernel')} {cmdline}\n"
            f"module {base}/{target.image_path('initrd')}\n"
            "boot\n"
        )
    return (
        "#!ipxe\n"
        f"kernel {base}/{target.image_path('kernel')} initrd=initrd {cmdline}\n"
        f"initrd --name initrd {base}/{target.image_path('initrd')}\n"
        "boot\n"
    )


def pxelinux_config(target: BootTarget) -> str:
    """pxelinux.cfg for one node; paths are TFTP names relative to the server's root."""
    if target.image is None:
        return (
            "DEFAULT nothing\n"
            "LABEL nothing\n"
            f"  SAY cloudctl: no boot image is set for role {target.role}; booting the local disk\n"
            "  LOCALBOOT 0\n"
        )
    cmdline = target.fill(target.cmdline)
    if target.multiboot:
        modules = (
            f"{target.image_path('hypervisor')} {target.fill(target.hypervisor_args)}"
            f" --- {target.image_path('kernel')} {cmdline}"
            f" --- {target.image_path('initrd')}"
        )
        return f"DEFAULT node\nLABEL node\n  KERNEL mboot.c32\n  APPEND {modules}\n"
    return (
        "DEFAULT node\n"
        "LABEL node\n"
        f"  KERNEL {target.image_path('kernel')}\n"
        f"  INITRD {target.image_path('initrd')}\n"
        f"  APPEND {cmdline}\n"
    )
