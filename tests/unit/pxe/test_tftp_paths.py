"""Tests for cloudctl.pxe.tftp.paths: names resolve inside the root or raise TftpPathError."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudctl.pxe.tftp.paths import TftpPathError, resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "tftp"
    (served / "pxelinux.cfg").mkdir(parents=True)
    (served / "pxelinux.0").write_bytes(b"boot")
    (served / "pxelinux.cfg" / "default").write_text("DEFAULT linux\n")
    (tmp_path / "secret").write_text("outside")
    return served


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("pxelinux.0", "pxelinux.0"),
        ("/pxelinux.0", "pxelinux.0"),
        ("pxelinux.cfg/default", "pxelinux.cfg/default"),
        ("pxelinux.cfg\\default", "pxelinux.cfg/default"),
        ("\\pxelinux.cfg\\default", "pxelinux.cfg/default"),
        ("./pxelinux.cfg//./default", "pxelinux.cfg/default"),
        ("pxelinux.cfg/01-52-54-00-12-34-56", "pxelinux.cfg/01-52-54-00-12-34-56"),
        ("/etc/passwd", "etc/passwd"),  # one leading slash means "relative to the root"
        ("a..b", "a..b"),  # dots inside a name are not a parent reference
    ],
)
def test_names_resolve_inside_root(root: Path, requested: str, expected: str):
    assert resolve_inside(root, requested) == Path(os.path.realpath(root)) / expected


def test_missing_files_still_resolve(root: Path):
    # Existence is the caller's question (ERROR 1), not a path-safety one.
    assert resolve_inside(root, "no/such/file") == root.resolve() / "no" / "such" / "file"


@pytest.mark.parametrize(
    "requested",
    [
        "",
        "pxe\x00linux.0",
        "../secret",
        "/../secret",
        "pxelinux.cfg/../../secret",
        "pxelinux.cfg/../default",  # stays inside, but `..` is refused outright
        "..",
        "..\\secret",
        "pxelinux.cfg\\..\\..\\secret",
        "//etc/passwd",
        "\\\\server\\share",
        "C:\\boot\\pxelinux.0",
        "c:/boot",
        "/",
        ".",
        "./",
    ],
)
def test_unsafe_names_are_refused(root: Path, requested: str):
    with pytest.raises(TftpPathError):
        resolve_inside(root, requested)


def test_name_length_limit(root: Path):
    assert resolve_inside(root, "a" * 255).name == "a" * 255
    with pytest.raises(TftpPathError, match="256 characters"):
        resolve_inside(root, "a" * 256)
    with pytest.raises(TftpPathError):
        resolve_inside(root, "abcdef", max_len=5)


def test_symlink_escaping_root_is_refused(root: Path, tmp_path: Path):
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "escape-dir").symlink_to(tmp_path)
    with pytest.raises(TftpPathError, match="outside the root"):
        resolve_inside(root, "escape")
    with pytest.raises(TftpPathError, match="outside the root"):
        resolve_inside(root, "escape-dir/secret")


def test_symlink_to_root_itself_is_refused(root: Path):
    (root / "self").symlink_to(root)
    with pytest.raises(TftpPathError):
        resolve_inside(root, "self")


def test_symlink_staying_inside_root_is_followed(root: Path):
    (root / "default-link").symlink_to(root / "pxelinux.cfg" / "default")
    assert resolve_inside(root, "default-link") == root.resolve() / "pxelinux.cfg" / "default"


def test_root_reached_through_a_symlink_works(root: Path, tmp_path: Path):
    link_to_root = tmp_path / "tftp-link"
    link_to_root.symlink_to(root)
    assert resolve_inside(link_to_root, "pxelinux.0") == root.resolve() / "pxelinux.0"


def test_sibling_directory_sharing_a_prefix_is_outside(root: Path, tmp_path: Path):
    # /x/tftp-other starts with the string "/x/tftp" but is not inside it.
    sibling = tmp_path / "tftp-other"
    sibling.mkdir()
    (root / "sib").symlink_to(sibling / "file")
    with pytest.raises(TftpPathError):
        resolve_inside(root, "sib")


def test_path_error_is_a_value_error():
    assert issubclass(TftpPathError, ValueError)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(alphabet="ab./\\:C\x00", max_size=40))
def test_random_names_resolve_inside_root_or_are_refused(root: Path, requested: str):
    real_root = root.resolve()
    try:
        resolved = resolve_inside(root, requested)
    except TftpPathError:
        return
    assert resolved != real_root and resolved.is_relative_to(real_root)
