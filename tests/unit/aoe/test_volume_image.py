"""Volume legs filled from an image's disk over HTTP (a real server on loopback): copied with
holes kept, checked against the image's checksum before the file exists, and never half made."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading

import pytest

from cloudctl.aoe.volumes import VolumeFileError, ensure_file

MIB = 1 << 20


@pytest.fixture
def disk_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    disk = served / "disk"
    # 1 MiB of data, 8 MiB of zeros, 1 MiB of data: the zeros should become a hole.
    disk.write_bytes(os.urandom(MIB) + bytes(8 * MIB) + os.urandom(MIB))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/disk"
    yield disk, url, hashlib.sha256(disk.read_bytes()).hexdigest()
    server.shutdown()
    server.server_close()


def test_leg_starts_as_the_image_disk_with_holes_and_grows_to_the_volume_size(
    tmp_path, disk_server
):
    disk, url, sha = disk_server
    leg = tmp_path / "root.img"
    assert ensure_file(leg, 64 * MIB, image=(url, sha)) is True
    assert leg.stat().st_size == 64 * MIB
    with leg.open("rb") as f:
        assert f.read(disk.stat().st_size) == disk.read_bytes()
        assert f.read() == bytes(64 * MIB - disk.stat().st_size)
    # Only the 2 MiB of data take blocks (holes for the zeros and the grown tail).
    assert leg.stat().st_blocks * 512 <= 3 * MIB
    assert ensure_file(leg, 64 * MIB, image=(url, sha)) is False  # exists: left alone


def test_a_disk_that_does_not_match_its_checksum_is_not_used(tmp_path, disk_server):
    _, url, _ = disk_server
    leg = tmp_path / "root.img"
    with pytest.raises(VolumeFileError, match="does not match its checksum"):
        ensure_file(leg, 64 * MIB, image=(url, "0" * 64))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "served") == []


def test_an_unreachable_image_server_leaves_nothing(tmp_path, disk_server):
    _, url, sha = disk_server
    leg = tmp_path / "root.img"
    with pytest.raises(VolumeFileError, match="cannot fetch image disk"):
        ensure_file(leg, 64 * MIB, image=(url.replace("/disk", "/missing"), sha))
    assert not leg.exists() and not (tmp_path / ".root.img.partial").exists()


def test_an_image_disk_overwrites_every_byte_of_a_device(tmp_path, disk_server):
    """LVM legs get the disk with holes=False: a logical volume's old blocks are overwritten,
    zeros included (a regular file stands in for the block device here)."""
    from cloudctl.aoe.lvm import _fill_from_image

    disk, url, sha = disk_server
    device = tmp_path / "lv"
    device.write_bytes(b"\xaa" * (16 * MIB))
    _fill_from_image(url, sha, device)
    with device.open("rb") as f:
        assert f.read(disk.stat().st_size) == disk.read_bytes()
        assert f.read() == b"\xaa" * (16 * MIB - disk.stat().st_size)  # beyond: zeroed earlier


def test_storage_serve_refuses_a_missing_volume_group_in_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import write_config

    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cloudctl.cli.main", "--config", str(config), "storage", "serve",
         "--node", "sn1", "--interface", "lo", "--volume-group", "no-such-vg-cc"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("cloudctl: error: vgs ")
    assert "no-such-vg-cc" in result.stderr and len(result.stderr.splitlines()) == 1
