"""Rendered boot configs: iPXE scripts and pxelinux configs, plain and Xen multiboot."""

from __future__ import annotations

import dataclasses

import pytest

from cloudctl.pxe.render import (
    BootTarget,
    RenderError,
    check_template,
    ipxe_script,
    pxelinux_config,
)

TARGET = BootTarget(
    name="hn1",
    mac="52:54:00:00:00:01",
    ip="10.20.0.3",
    role="hnode",
    server="10.20.0.2",
    http_port=8080,
    domain="cloud.test",
    gateway="10.20.0.1",
    netmask="255.255.255.0",
    image="deb12",
    multiboot=False,
    cmdline="console=ttyS0 hostname={name}.{domain} ip={ip}",
    hypervisor_args="dom0_mem=768M console=com1",
)


def test_ipxe_plain():
    assert ipxe_script(TARGET) == (
        "#!ipxe\n"
        "kernel http://10.20.0.2:8080/images/deb12/kernel initrd=initrd "
        "console=ttyS0 hostname=hn1.cloud.test ip=10.20.0.3\n"
        "initrd --name initrd http://10.20.0.2:8080/images/deb12/initrd\n"
        "boot\n"
    )


def test_ipxe_xen_multiboot():
    xen = dataclasses.replace(TARGET, multiboot=True)
    assert ipxe_script(xen) == (
        "#!ipxe\n"
        "kernel http://10.20.0.2:8080/images/deb12/hypervisor dom0_mem=768M console=com1\n"
        "module http://10.20.0.2:8080/images/deb12/kernel "
        "console=ttyS0 hostname=hn1.cloud.test ip=10.20.0.3\n"
        "module http://10.20.0.2:8080/images/deb12/initrd\n"
        "boot\n"
    )


def test_pxelinux_plain_and_xen():
    assert pxelinux_config(TARGET) == (
        "DEFAULT node\nLABEL node\n  KERNEL images/deb12/kernel\n  INITRD images/deb12/initrd\n"
        "  APPEND console=ttyS0 hostname=hn1.cloud.test ip=10.20.0.3\n"
    )
    xen = pxelinux_config(dataclasses.replace(TARGET, multiboot=True))
    assert xen == (
        "DEFAULT node\nLABEL node\n  KERNEL mboot.c32\n"
        "  APPEND images/deb12/hypervisor dom0_mem=768M console=com1 --- images/deb12/kernel "
        "console=ttyS0 hostname=hn1.cloud.test ip=10.20.0.3 --- images/deb12/initrd\n"
    )


def test_no_image_says_so_instead_of_booting_nothing():
    bare = dataclasses.replace(TARGET, image=None)
    assert "no boot image for role hnode" in ipxe_script(bare)
    assert ipxe_script(bare).endswith("exit 1\n")
    assert "LOCALBOOT 0" in pxelinux_config(bare)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root={rootdev}", "unknown placeholder {rootdev}"),
        ("a\nb", "one line"),
        ("x={", "write a literal brace"),
    ],
)
def test_bad_templates(text, message):
    with pytest.raises(RenderError, match=message):
        check_template(text, "cmdline")


def test_literal_braces_survive():
    assert check_template("a={{b}} {name}", "cmdline") == "a={{b}} {name}"
    assert TARGET.fill("a={{b}} {name}") == "a={b} hn1"


def test_multiboot_lines_over_ipxes_buffer_are_refused_not_cut():
    from cloudctl.pxe.render import multiboot_cmdline_bytes

    xen = dataclasses.replace(TARGET, multiboot=True)
    assert multiboot_cmdline_bytes(xen) < 512
    long = dataclasses.replace(xen, cmdline="console=hvc0 " + "x" * 400)
    assert multiboot_cmdline_bytes(long) > 512
    script = ipxe_script(long)
    assert script.startswith("#!ipxe\necho cloudctl: the Xen and dom0 command lines need ")
    assert "module" not in script  # never a silently truncated boot
    assert "KERNEL mboot.c32" in pxelinux_config(long)  # mboot.c32 has no such limit
