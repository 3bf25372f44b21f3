"""BootFiles: rendered first, then mounts, roots and Debian's boot programs; traversal refused."""

from __future__ import annotations

import pytest

from cloudctl.pxe.bootfiles import BootFileError, BootFiles, DiskFile, Refusal, RenderedFile


def _files(tmp_path, packaged=None):
    root, images, outside = tmp_path / "tftp", tmp_path / "images", tmp_path / "secret"
    for d in (root, images / "deb12", outside):
        d.mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello")
    (images / "deb12" / "kernel").write_bytes(b"K" * 1000)
    (outside / "state.db").write_bytes(b"private")
    (root / "escape").symlink_to(outside / "state.db")

    def render(name, mac, ip):
        return b"rendered " + name.encode() if name.startswith("boot/") else None

    return BootFiles((root,), render, packaged or {}, mounts=(("images/", images),))


def test_lookup_order(tmp_path):
    packaged = tmp_path / "pxelinux.0"
    packaged.write_bytes(b"PXE")
    files = _files(tmp_path, {"pxelinux.0": packaged})
    rendered = files.open("boot/52:54:00:00:00:01.ipxe")
    assert (
        isinstance(rendered, RenderedFile)
        and rendered.read(0, 100) == b"rendered boot/52:54:00:00:00:01.ipxe"
    )
    kernel = files.open("/images/deb12/kernel")
    assert (
        isinstance(kernel, DiskFile) and kernel.size == 1000 and kernel.read(990, 100) == b"K" * 10
    )
    kernel.close()
    assert files.open("hello.txt").read(0, 5) == b"hello"
    assert files.open("pxelinux.0").read(0, 3) == b"PXE"


@pytest.mark.parametrize(
    "name", ["../secret/state.db", "images/../secret/state.db", "escape", "//etc/passwd", "a\0b"]
)
def test_traversal_is_an_access_violation(tmp_path, name):
    with pytest.raises(BootFileError) as info:
        _files(tmp_path).open(name)
    assert info.value.refusal is Refusal.ACCESS


def test_missing_is_not_found(tmp_path):
    with pytest.raises(BootFileError) as info:
        _files(tmp_path).open("images/deb12/initrd")
    assert info.value.refusal is Refusal.NOT_FOUND
