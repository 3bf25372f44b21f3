"""A qemu guest's iPXE ROM (TCG, -boot n) gets its lease and boot script from cloudctld's DHCP."""

from __future__ import annotations

import re

import pytest

from tests import netlab
from tests.conftest import Daemon, write_config
from tests.qemu import Guest, wrapped

pytestmark = [*netlab.needs_root, pytest.mark.slow]

MAC = "52:54:00:c1:0d:31"


def test_registered_guest_gets_its_lease_and_ipxe_script(short_tmp, tmp_path):
    with netlab.Lab() as lab:
        switch = lab.netns("sw")
        lab.bridge(switch, "br0", router_advertisements=True)
        lab.address(switch, "br0", "10.20.0.2/24")
        daemon = Daemon(
            short_tmp, write_config(short_tmp, interface="br0", dhcp=True), netns=switch
        )
        daemon.start()
        try:
            node = daemon.api(
                "POST", "/v1/nodes", {"mac": MAC, "role": "hnode", "ip": "10.20.0.50"}
            )
            guest = Guest(lab, switch, "br0", MAC, boot="pxe", console_log=tmp_path / "console.log")
            with guest:
                guest.wait_for(wrapped(f"Configuring (net0 {MAC})"), timeout=60)
                configured = guest.wait_for(
                    wrapped("net0: 10.20.0.50/255.255.255.0 gw 10.20.0.1"), 60
                )
                # iPXE then fetches what DHCP named: its own script, not another iPXE binary.
                script = f"http://10.20.0.2:8080/boot/{MAC}.ipxe"
                guest.wait_for(wrapped(script), timeout=60)
                print(f"iPXE configured {guest.seen_at(configured):.1f} s after qemu start")
            log = daemon.log.read_text()
            assert re.search(rf"offer: OFFER 10\.20\.0\.50 to {MAC}, boot {re.escape(script)}", log)
            assert re.search(rf"ack: ACK 10\.20\.0\.50 to {MAC}, boot {re.escape(script)}", log)
            lease = daemon.api("GET", "/v1/leases")["leases"]
            assert [(entry["mac"], entry["ip"], entry["hostname"]) for entry in lease] == [
                (MAC, "10.20.0.50", node["name"])
            ]
        finally:
            daemon.stop()
