"""HttpBootServer on 127.0.0.1 against the real curl: whole files byte for byte, ranges, HEAD,
traversal sent verbatim with --path-as-is, connection reuse, and a throughput measurement."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from cloudctl.pxe.bootfiles import BootFiles
from cloudctl.pxe.http import HttpBootServer
from tests.serverthread import ServerThread

T = TypeVar("T")

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

MAC = "52:54:00:ab:cd:ef"
SECRET = b"SECRET-OUTSIDE-THE-ROOT"
BIG = 20 << 20
HUGE = 64 << 20


def render(name: str, mac: str | None, client_ip: str | None) -> bytes | None:
    if name == f"boot/{MAC}.ipxe":
        return (
            f"#!ipxe\nkernel /vmlinuz mac={mac} ip={client_ip}\ninitrd /initrd.img\nboot\n".encode()
        )
    return None


class HttpThread(ServerThread[HttpBootServer]):
    """An HttpBootServer on 127.0.0.1 in a background thread, so curl can block."""

    def __init__(self, files: BootFiles) -> None:
        server = HttpBootServer(files, host="127.0.0.1", port=0, mac_lookup={"127.0.0.1": MAC}.get)
        super().__init__(server, call_timeout=30)

    def url(self, path: str) -> str:
        host, port = self.server.address
        return f"http://{host}:{port}{path}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("httpboot")
    served = base / "root"
    (served / "pxelinux.cfg").mkdir(parents=True)
    (served / "vmlinuz").write_bytes(os.urandom(BIG))
    (served / "initrd.img").write_bytes(os.urandom(3 << 20))
    (served / "huge.img").write_bytes(os.urandom(HUGE))
    (served / "pxelinux.cfg" / "default").write_text("DEFAULT linux\n")
    (base / "secret").write_bytes(SECRET)
    (served / "escape").symlink_to(base / "secret")
    (served / "escape-dir").symlink_to(base)
    return served


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[HttpThread]:
    files = BootFiles(roots=(root,), render=render, packaged={})
    with HttpThread(files) as running:
        yield running


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--noproxy", "*", *args],
        capture_output=True,
        timeout=60,
        check=False,
    )


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_whole_file_byte_for_byte(server, root, tmp_path):
    out = tmp_path / "vmlinuz"
    result = curl(
        "--output", str(out), "--write-out", "%{http_code} %{size_download}", server.url("/vmlinuz")
    )
    assert result.stdout.decode() == f"200 {BIG}"
    assert digest(out.read_bytes()) == digest((root / "vmlinuz").read_bytes())


def test_range(server, root):
    result = curl("--range", "1000-1999", "--write-out", "\n%{http_code}", server.url("/vmlinuz"))
    body, _, code = result.stdout.rpartition(b"\n")
    assert code == b"206"
    assert body == (root / "vmlinuz").read_bytes()[1000:2000]
    suffix = curl("--range", "-100", server.url("/vmlinuz"))
    assert suffix.stdout == (root / "vmlinuz").read_bytes()[-100:]


def test_head(server):
    result = curl("--head", server.url("/vmlinuz"))
    lines = result.stdout.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["content-length"] == str(BIG)
    assert headers["content-type"] == "application/octet-stream"
    assert headers["accept-ranges"] == "bytes"


def test_rendered_script(server):
    result = curl("--write-out", "%{content_type}", server.url(f"/boot/{MAC}.ipxe"))
    assert result.stdout.startswith(f"#!ipxe\nkernel /vmlinuz mac={MAC} ip=127.0.0.1\n".encode())
    assert result.stdout.endswith(b"boot\ntext/plain")


@pytest.mark.parametrize(
    "path",
    [
        "/../secret",
        "/%2e%2e/secret",
        "/%2E%2E/%2E%2E/etc/passwd",
        "/./../secret",
        "/pxelinux.cfg/../../secret",
        "/..%2fsecret",
        "/..%5csecret",
        "/escape",
        "/escape-dir/secret",
        "//etc/passwd",
        "/../../../../../../etc/passwd",
    ],
)
def test_traversal_is_refused(server, path):
    result = curl("--path-as-is", "--write-out", "\n%{http_code}", server.url(path))
    body, _, code = result.stdout.rpartition(b"\n")
    assert code in (b"403", b"404"), (path, code)
    assert SECRET not in body
    assert b"root:" not in body


def test_two_files_on_one_connection(server, root, tmp_path):
    result = curl(
        "--verbose",
        "--output",
        str(tmp_path / "a"),
        server.url("/vmlinuz"),
        "--output",
        str(tmp_path / "b"),
        server.url("/initrd.img"),
    )
    assert result.returncode == 0, result.stderr
    assert b"Re-using existing connection" in result.stderr
    assert (tmp_path / "a").read_bytes() == (root / "vmlinuz").read_bytes()
    assert (tmp_path / "b").read_bytes() == (root / "initrd.img").read_bytes()


def test_throughput_measurement(server, capsys):
    """Prints curl's download rate of a 64 MiB file from 127.0.0.1; asserts only completeness."""
    rates = []
    for _ in range(3):  # the first run also warms curl and the page cache
        result = curl(
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_download} %{speed_download}",
            server.url("/huge.img"),
        )
        size, speed = result.stdout.decode().split()
        assert int(size) == HUGE
        rates.append(float(speed) / 1e6)
    runs = ", ".join(f"{rate:.0f}" for rate in rates)
    with capsys.disabled():
        print(f"\nHTTP boot: curl, 64 MiB from 127.0.0.1: {max(rates):.0f} MB/s (runs: {runs})")
