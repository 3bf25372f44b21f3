"""Config loading: the example is valid, and each mistake names its key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from cloudctl.config import ConfigError, load_config

EXAMPLE = Path(__file__).parents[2] / "etc" / "cloudctl.yaml"


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.network.subnet == ipaddress.IPv4Network("10.20.0.0/24")
    assert config.network.dns_servers == (ipaddress.IPv4Address("10.20.0.2"),)
    assert config.api.socket_mode == 0o660
    assert config.api.tcp is None
    assert config.state.path == Path("/var/lib/cloudctl/state.db")


def _with(tmp_path: Path, change) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text())
    change(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _set(path: str, value):
    def change(data):
        keys = path.split(".")
        for key in keys[:-1]:
            data = data.setdefault(key, {})
        data[keys[-1]] = value

    return change


def _delete(path: str):
    def change(data):
        keys = path.split(".")
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_delete("state.path"), "state.path: is required"),
        (_delete("network"), "network.subnet: is required"),
        (_set("network.subnet", "10.20.0.5/24"), "network.subnet: must be an IPv4 subnet"),
        (
            _set("network.gateway", "10.30.0.1"),
            "network.gateway: 10.30.0.1 is not a usable address",
        ),
        (
            _set("network.server", "nonsense"),
            "network.server: must be an IPv4 address, got 'nonsense'",
        ),
        (
            _set("network.dynamic_range", ["10.20.0.9"]),
            "network.dynamic_range: must be a list of two",
        ),
        (
            _set("network.dynamic_range", ["10.20.0.90", "10.20.0.10"]),
            "network.dynamic_range: the first address 10.20.0.90 is after the last 10.20.0.10",
        ),
        (
            _set("network.dynamic_range", ["10.20.0.1", "10.20.0.10"]),
            "network.dynamic_range: must not contain the gateway address",
        ),
        (_set("network.domain", "bad_domain!"), "network.domain: must be a DNS domain"),
        (
            _set("network.interface", "an-interface-name-too-long"),
            "network.interface: must be a network interface name",
        ),
        (_set("network.dns_servers", []), "network.dns_servers: must be a non-empty list"),
        (_set("network.colour", "blue"), "network.colour: unknown key"),
        (_set("extra", 1), "extra: unknown key"),
        (
            _set("api.socket_mode", "0999"),
            "api.socket_mode: must be a file mode like 0660, got '0999'",
        ),
        (
            _set("api.tcp", {"port": 99999, "token": "x" * 20}),
            "api.tcp.port: must be a port number",
        ),
        (_set("api.tcp", {"port": 8781}), "api.tcp.token: set exactly one of token or token_file"),
        (
            _set("api.tcp", {"port": 8781, "token": "short"}),
            "api.tcp.token: the token must be at least 16",
        ),
        (
            _set("api.tcp", {"port": 8781, "token_file": "/nonexistent/token"}),
            "api.tcp.token_file: cannot read /nonexistent/token",
        ),
        (_set("boot.http_port", True), "boot.http_port: must be a port number"),
        (_set("log_level", "loud"), "log_level: must be one of debug, info, warning, error"),
        (_set("dhcp.lease_time", 5), "dhcp.lease_time: must be a whole number of seconds from 60"),
        (_set("dns.ttl", True), "dns.ttl: must be a whole number of seconds from 0 to 86400"),
        (
            _set("boot.tftp_max_per_client", 0),
            "boot.tftp_max_per_client: must be a whole number from 1 to 1000, got 0",
        ),
        (_set("state", ["a"]), "state: must be a mapping"),
        (
            _set("hypervisor.uri", "qemu+tcp://{host}/system"),
            "hypervisor.uri: unknown placeholder {host}; use {name}, {ip} or {mac}",
        ),
        (_set("hypervisor.flavour", "kvm"), "hypervisor.flavour: must be one of xen, qemu"),
        (
            _set("storage.serve_node", "sn1"),
            "storage.serve_node: set serve_node and serve_interfaces together (or neither)",
        ),
        (
            _set("hypervisor.volume_device", "/dev/md/{name}"),
            "hypervisor.volume_device: must be an absolute path with {volume} or {device} in it",
        ),
        (_set("hypervisor.policy", "random"), "hypervisor.policy: must be one of spread, pack"),
        (
            _set("hypervisor.failover_after", 1),
            "hypervisor.failover_after: must be a whole number of seconds from 10",
        ),
    ],
)
def test_each_error_names_its_key(tmp_path, change, expected):
    path = _with(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("state:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: line \d+: "):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file: No such file or directory"):
        load_config(tmp_path / "absent.yaml")


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    path = _with(tmp_path, _set("state.path", "data/state.db"))
    (tmp_path / "token").write_text("0123456789abcdef0123\n")
    assert load_config(path).state.path == tmp_path / "data" / "state.db"
    path = _with(tmp_path, _set("api.tcp", {"port": 8781, "token_file": "token"}))
    assert load_config(path).api.tcp.token == "0123456789abcdef0123"
