"""cloudctl against a real cloudctld over its Unix socket: the node verbs, errors and audit."""

from __future__ import annotations

import os
import stat

import pytest


def test_socket_has_configured_mode(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660


def test_add_list_show_remove(daemon):
    added = daemon.cli_json("node", "add", "--mac", "52:54:00:AA:00:01", "--role", "hnode")
    assert added["name"] == "hn1"
    assert added["mac"] == "52:54:00:aa:00:01"
    assert added["ip"] == "10.20.0.3"  # .1 gateway and .2 server are skipped
    assert added["state"] == "registered"
    storage = daemon.cli_json(
        "node",
        "add",
        "--mac",
        "52-54-00-aa-00-02",
        "--role",
        "snode",
        "--name",
        "store-a",
        "--ip",
        "10.20.0.50",
    )
    assert (storage["name"], storage["ip"]) == ("store-a", "10.20.0.50")

    nodes = daemon.cli_json("node", "list")
    assert [n["name"] for n in nodes] == ["hn1", "store-a"]
    assert [n["name"] for n in daemon.cli_json("node", "list", "--role", "snode")] == ["store-a"]
    text = daemon.cli("node", "list").stdout.splitlines()
    assert text[0].split() == ["NAME", "MAC", "ROLE", "IP", "STATE"]
    assert text[1].split() == ["hn1", "52:54:00:aa:00:01", "hnode", "10.20.0.3", "registered"]

    assert daemon.cli_json("node", "show", "hn1")["mac"] == "52:54:00:aa:00:01"
    assert daemon.cli_json("node", "show", "52:54:00:aa:00:02")["name"] == "store-a"

    removed = daemon.cli_json("node", "remove", "hn1", "--reason", "decommissioned")
    assert removed["name"] == "hn1"
    assert [n["name"] for n in daemon.cli_json("node", "list")] == ["store-a"]
    missing = daemon.cli("node", "show", "hn1", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "cloudctl: error: no node named 'hn1'\n"


def test_drain_and_undrain_restore_previous_state(daemon):
    daemon.cli("node", "add", "--mac", "52:54:00:aa:00:01", "--role", "hnode")
    assert daemon.cli_json("node", "drain", "hn1", "--reason", "bios update")["state"] == "drained"
    assert [n["name"] for n in daemon.cli_json("node", "list", "--state", "drained")] == ["hn1"]
    assert daemon.cli_json("node", "undrain", "hn1")["state"] == "registered"


def test_every_change_is_audited_with_actor_and_reason(daemon):
    daemon.cli("node", "add", "--mac", "52:54:00:aa:00:01", "--role", "hnode", "--reason", "rack 4")
    daemon.cli("node", "drain", "hn1", "--reason", "fan noise")
    daemon.cli("node", "remove", "hn1", "--reason", "returned to vendor")
    entries = daemon.cli_json("audit", "list")
    assert [(e["action"], e["target"], e["reason"]) for e in entries] == [
        ("node.remove", "hn1", "returned to vendor"),
        ("node.drain", "hn1", "fan noise"),
        ("node.add", "hn1", "rack 4"),
    ]
    assert {e["actor"] for e in entries} == {"root"}  # SO_PEERCRED of the test process
    assert entries[2]["detail"] == {"mac": "52:54:00:aa:00:01", "role": "hnode", "ip": "10.20.0.3"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--mac", "52:54:00:zz:00:01", "--role", "hnode"],
            "invalid MAC address '52:54:00:zz:00:01': "
            "expected six hex octets like 52:54:00:12:34:56",
        ),
        (
            ["--mac", "01:00:5e:00:00:01", "--role", "hnode"],
            "invalid MAC address '01:00:5e:00:00:01': it is a multicast address",
        ),
        (
            ["--mac", "52:54:00:aa:00:09", "--role", "hnode", "--ip", "10.99.0.3"],
            "IP address 10.99.0.3 is outside the cloud subnet 10.20.0.0/24",
        ),
        (
            ["--mac", "52:54:00:aa:00:09", "--role", "hnode", "--ip", "10.20.0.1"],
            "IP address 10.20.0.1 is the gateway's or the config node's",
        ),
        (
            ["--mac", "52:54:00:aa:00:09", "--role", "hnode", "--ip", "10.20.0.220"],
            "IP address 10.20.0.220 is inside the dynamic range 10.20.0.200-10.20.0.250; "
            "fixed addresses must be outside it",
        ),
        (
            ["--mac", "52:54:00:aa:00:09", "--role", "hnode", "--name", "Bad_Name"],
            "invalid node name 'Bad_Name': use 1-63 lower-case letters, digits and '-', "
            "starting with a letter (it becomes a DNS label)",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(daemon, args, message):
    result = daemon.cli("node", "add", *args, check=False)
    assert result.returncode == 1
    assert result.stderr == f"cloudctl: error: {message}\n"
    assert daemon.cli_json("node", "list") == []
    assert daemon.cli_json("audit", "list") == []


def test_duplicates_are_refused_without_side_effects(daemon):
    daemon.cli("node", "add", "--mac", "52:54:00:aa:00:01", "--role", "hnode", "--ip", "10.20.0.10")
    dup_mac = daemon.cli(
        "node", "add", "--mac", "52:54:00:AA:00:01", "--role", "snode", check=False
    )
    assert dup_mac.returncode == 1
    assert (
        dup_mac.stderr
        == "cloudctl: error: MAC 52:54:00:aa:00:01 is already registered as node hn1\n"
    )
    dup_ip = daemon.cli(
        "node",
        "add",
        "--mac",
        "52:54:00:aa:00:02",
        "--role",
        "hnode",
        "--ip",
        "10.20.0.10",
        check=False,
    )
    assert dup_ip.stderr == "cloudctl: error: IP 10.20.0.10 is already the address of node hn1\n"
    dup_name = daemon.cli(
        "node", "add", "--mac", "52:54:00:aa:00:03", "--role", "hnode", "--name", "hn1", check=False
    )
    assert dup_name.stderr == "cloudctl: error: a node named hn1 already exists\n"
    assert len(daemon.cli_json("node", "list")) == 1
    assert len(daemon.cli_json("audit", "list")) == 1


def test_unknown_role_is_a_usage_error(daemon):
    result = daemon.cli("node", "add", "--mac", "52:54:00:aa:00:01", "--role", "gpu", check=False)
    assert result.returncode == 2
    assert result.stderr == (
        "cloudctl node add: error: argument --role: invalid choice: 'gpu' "
        "(choose from 'hnode', 'snode')\n"
    )


def test_unknown_role_through_the_api_is_refused(daemon):
    from cloudctl.cli.client import ApiClient, CliError

    client = ApiClient(str(daemon.socket))
    with pytest.raises(CliError, match=r"^invalid role 'gpu': choose one of hnode, snode$"):
        client.request("POST", "/v1/nodes", {"mac": "52:54:00:aa:00:01", "role": "gpu"})
    with pytest.raises(CliError, match=r"^unknown field 'colour'$"):
        client.request(
            "POST", "/v1/nodes", {"mac": "52:54:00:aa:00:01", "role": "hnode", "colour": 1}
        )
    client.close()


def test_daemon_not_running_is_one_line(short_tmp):
    from tests.conftest import Daemon, write_config

    d = Daemon(short_tmp, write_config(short_tmp))
    result = d.cli("node", "list", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"cloudctl: error: cannot reach cloudctld at {d.socket}: No such file or directory "
        "(is cloudctld running?)\n"
    )


def test_openapi_document_lists_every_route(daemon):
    import json
    import re

    from cloudctl.api.table import ROUTES
    from cloudctl.cli.client import ApiClient

    doc = ApiClient(str(daemon.socket)).request("GET", "/openapi.json")
    assert doc["openapi"].startswith("3.")
    json.dumps(doc)
    for route in ROUTES:
        template = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", route.template)
        assert route.method.lower() in doc["paths"][template]
    assert doc["paths"]["/v1/nodes"]["post"]["responses"]["201"]
