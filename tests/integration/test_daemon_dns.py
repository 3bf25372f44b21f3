"""cloudctld's DNS answers from the inventory, checked with the real dig."""

from __future__ import annotations

import socket
import subprocess

from tests.conftest import Daemon, write_config


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp.bind(("127.0.0.1", port))
        return port


def dig(port: int, *args: str) -> str:
    argv = ["dig", "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout


def test_registered_node_resolves_at_once(short_tmp):
    port = _free_port()
    daemon = Daemon(short_tmp, write_config(short_tmp, dns_port=port))
    daemon.start()
    try:
        assert "status: NXDOMAIN" in dig(port, "hn1.cloud.test")
        daemon.cli(
            "node", "add", "--mac", "52:54:00:aa:00:01", "--role", "hnode", "--ip", "10.20.0.33"
        )
        assert dig(port, "+short", "hn1.cloud.test").strip() == "10.20.0.33"
        assert dig(port, "+short", "+tcp", "HN1.Cloud.Test").strip() == "10.20.0.33"
        assert dig(port, "+short", "-x", "10.20.0.33").strip() == "hn1.cloud.test."
        outside = dig(port, "example.org")
        assert "status: REFUSED" in outside
        assert " ra" not in outside.split("flags:")[1].split(";")[0]  # no recursion offered
        serial_before = dig(port, "+short", "SOA", "cloud.test").split()[2]
        daemon.cli("node", "remove", "hn1")
        assert "status: NXDOMAIN" in dig(port, "hn1.cloud.test")
        assert int(dig(port, "+short", "SOA", "cloud.test").split()[2]) > int(serial_before)
        stats = daemon.api("GET", "/v1/stats")["dns"]
        assert stats["queries"] >= 8 and stats["refused"] >= 1
    finally:
        daemon.stop()
