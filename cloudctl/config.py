"""Load etc/cloudctl.yaml into validated, frozen dataclasses.

Every problem is reported as one ConfigError line naming the file, the key path and what is
wrong, so `cloudctld` and `cloudctl` can print it and exit. Relative paths are taken relative
to the config file's directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_PATH = Path("/etc/cloudctl/cloudctl.yaml")
DEFAULT_API_SOCKET = Path("/run/cloudctl/api.sock")

_MISSING = object()
_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


@dataclass(frozen=True)
class StateConfig:
    path: Path


@dataclass(frozen=True)
class TcpListenerConfig:
    host: str
    port: int
    token: str


@dataclass(frozen=True)
class ApiConfig:
    socket: Path
    socket_mode: int
    socket_group: str | None
    tcp: TcpListenerConfig | None


@dataclass(frozen=True)
class NetworkConfig:
    interface: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    server: ipaddress.IPv4Address
    dynamic_range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    domain: str
    dns_servers: tuple[ipaddress.IPv4Address, ...]


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool
    lease_time: int
    discovery: bool
    discovery_lease_time: int


@dataclass(frozen=True)
class DnsConfig:
    enabled: bool
    listen: tuple[ipaddress.IPv4Address, ...]
    port: int
    ttl: int


@dataclass(frozen=True)
class BootConfig:
    enabled: bool
    tftp_root: Path
    image_dir: Path
    http_port: int
    tftp_port: int
    tftp_max_transfers: int
    tftp_max_per_client: int
    tftp_max_windowsize: int
    tftp_workers: int


@dataclass(frozen=True)
class StorageConfig:
    volume_dir: Path
    # Legs as LVM logical volumes in this volume group instead of files in volume_dir.
    volume_group: str | None
    # One-machine setups: cloudctld itself is this storage node and serves its legs over AoE.
    serve_node: str | None
    serve_interfaces: tuple[str, ...]


@dataclass(frozen=True)
class HypervisorConfig:
    """How cloudctld reaches each hardware node's libvirt and runs instances there."""

    uri: str  # template: {name} {ip} {mac} of the hardware node
    flavour: str  # "xen" (libxl domains) or "qemu" (the lab)
    boot: str  # "pvh" or "hvm" for xen; qemu boots the profile's kernel directly
    bridge: str  # the bridge on each hardware node that instance NICs join
    migration_uri: str  # template: where the destination's hypervisor receives memory
    connect_timeout: int
    call_timeout: int
    poll_interval: int
    policy: str  # "spread" or "pack"
    max_downtime_ms: int
    bandwidth_mib: int  # 0: unlimited
    migration_timeout: int
    drain_parallel: int
    failover: bool  # restart a dead node's instances elsewhere without being asked
    failover_after: int
    # The path of an instance's volume on its node: {volume} name, {device} its first AoE leg.
    # None: /dev/md/{volume} when mirrored, /dev/etherd/{device} when not.
    volume_device: str | None


@dataclass(frozen=True)
class Config:
    source: Path
    log_level: str
    state: StateConfig
    api: ApiConfig
    network: NetworkConfig
    dhcp: DhcpConfig
    dns: DnsConfig
    boot: BootConfig
    storage: StorageConfig
    hypervisor: HypervisorConfig


class _Section:
    """A mapping being read: remembers its key path and which keys were used."""

    def __init__(self, data: Any, path: str, source: Path) -> None:
        self.path = path
        self.source = source
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path or "(top level)", f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def fail(self, key_path: str, what: str) -> None:
        raise ConfigError(f"{self.source}: {key_path}: {what}")

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def value(self, key: str, convert: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                self.fail(self.key_path(key), "is required")
            return default
        try:
            return convert(self.data[key])
        except (ValueError, TypeError) as exc:
            self.fail(self.key_path(key), str(exc))

    def section(self, key: str) -> _Section:
        self.used.add(key)
        return _Section(self.data.get(key), self.key_path(key), self.source)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            self.fail(
                self.key_path(unknown[0]),
                "unknown key (check the spelling against etc/cloudctl.yaml)",
            )


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port number 1-65535, got {value!r}")
    return value


def _file_mode(value: Any) -> int:
    # YAML reads 0660 as octal 432 already; a quoted "0660" arrives as a string.
    original = value
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise ValueError(f"must be a file mode like 0660, got {original!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise ValueError(f"must be a file mode like 0660, got {value!r}")
    return value


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise ValueError(f"must be an IPv4 address, got {value!r}") from None


def _subnet(value: Any) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise ValueError(f"must be an IPv4 subnet like 10.20.0.0/24 ({exc})") from None


def _domain(value: Any) -> str:
    text = _string(value).lower().rstrip(".")
    if not _DOMAIN_RE.match(text):
        raise ValueError(f"must be a DNS domain like cloud.example, got {value!r}")
    return text


def _interface(value: Any) -> str:
    text = _string(value)
    if not _IFACE_RE.match(text):
        raise ValueError(f"must be a network interface name (at most 15 characters), got {value!r}")
    return text


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _whole(low: int, high: int, unit: str = "") -> Callable[[Any], int]:
    """An int from low to high; `unit` ("seconds") only words the error."""
    what = f"a whole number of {unit}" if unit else "a whole number"

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be {what} from {low} to {high}, got {value!r}")
        return value

    return convert


def _log_level(value: Any) -> str:
    text = _string(value).upper()
    if text not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"must be one of debug, info, warning, error, got {value!r}")
    return text


def _path_under(base: Path) -> Callable[[Any], Path]:
    def convert(value: Any) -> Path:
        path = Path(_string(value))
        return path if path.is_absolute() else (base / path)

    return convert


def _read_token(api_tcp: _Section, base: Path) -> str:
    if api_tcp.has("token") == api_tcp.has("token_file"):
        api_tcp.fail(api_tcp.key_path("token"), "set exactly one of token or token_file")
    if api_tcp.has("token"):
        token = api_tcp.value("token", _string)
        key = "token"
    else:
        token_file = api_tcp.value("token_file", _path_under(base))
        key = "token_file"
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            api_tcp.fail(api_tcp.key_path(key), f"cannot read {token_file}: {exc.strerror}")
    if len(token) < 16:
        api_tcp.fail(api_tcp.key_path(key), "the token must be at least 16 characters")
    return token


def _load_api(api: _Section, base: Path) -> ApiConfig:
    tcp = None
    if api.has("tcp"):
        api_tcp = api.section("tcp")
        tcp = TcpListenerConfig(
            host=api_tcp.value("host", _string, "127.0.0.1"),
            port=api_tcp.value("port", _port),
            token=_read_token(api_tcp, base),
        )
        api_tcp.finish()
    else:
        api.used.add("tcp")
    config = ApiConfig(
        socket=api.value("socket", _path_under(base), DEFAULT_API_SOCKET),
        socket_mode=api.value("socket_mode", _file_mode, 0o660),
        socket_group=api.value("socket_group", _string, None),
        tcp=tcp,
    )
    api.finish()
    return config


def _load_network(net: _Section) -> NetworkConfig:
    subnet = net.value("subnet", _subnet)

    def inside(key: str) -> Callable[[Any], ipaddress.IPv4Address]:
        def convert(value: Any) -> ipaddress.IPv4Address:
            address = _ipv4(value)
            if address not in subnet or address in (
                subnet.network_address,
                subnet.broadcast_address,
            ):
                raise ValueError(f"{address} is not a usable address in the subnet {subnet}")
            return address

        return convert

    def address_range(value: Any) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("must be a list of two addresses: [first, last]")
        first, last = (inside("dynamic_range")(v) for v in value)
        if first > last:
            raise ValueError(f"the first address {first} is after the last {last}")
        return first, last

    def address_list(value: Any) -> tuple[ipaddress.IPv4Address, ...]:
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list of IPv4 addresses")
        return tuple(_ipv4(v) for v in value)

    server = net.value("server", inside("server"))
    config = NetworkConfig(
        interface=net.value("interface", _interface),
        subnet=subnet,
        gateway=net.value("gateway", inside("gateway")),
        server=server,
        dynamic_range=net.value("dynamic_range", address_range),
        domain=net.value("domain", _domain),
        dns_servers=net.value("dns_servers", address_list, (server,)),
    )
    first, last = config.dynamic_range
    for key in ("gateway", "server"):
        if first <= getattr(config, key) <= last:
            net.fail(net.key_path("dynamic_range"), f"must not contain the {key} address")
    net.finish()
    return config


_URI_FIELDS = {"name", "ip", "mac"}


def _template(value: Any) -> str:
    text = _string(value)
    fields = set(re.findall(r"\{(\w*)\}", text))
    if not fields <= _URI_FIELDS:
        bad = sorted(fields - _URI_FIELDS)[0]
        raise ValueError(f"unknown placeholder {{{bad}}}; use {{name}}, {{ip}} or {{mac}}")
    return text


def _volume_device(value: Any) -> str:
    text = _string(value)
    fields = set(re.findall(r"\{(\w*)\}", text))
    if not fields or not fields <= {"volume", "device"}:
        raise ValueError("must be an absolute path with {volume} or {device} in it")
    if not text.startswith("/"):
        raise ValueError(f"must be an absolute path, got {text!r}")
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return convert


def _load_hypervisor(hv: _Section) -> HypervisorConfig:
    flavour = hv.value("flavour", _choice("xen", "qemu"), "xen")
    config = HypervisorConfig(
        uri=hv.value("uri", _template, "xen+tcp://{ip}/system"),
        flavour=flavour,
        boot=hv.value("boot", _choice("pvh", "hvm"), "pvh"),
        bridge=hv.value("bridge", _interface, "br0"),
        migration_uri=hv.value("migration_uri", _template, "tcp://{ip}:49152"),
        connect_timeout=hv.value("connect_timeout", _whole(1, 600, "seconds"), 15),
        call_timeout=hv.value("call_timeout", _whole(1, 3600, "seconds"), 60),
        poll_interval=hv.value("poll_interval", _whole(1, 3600, "seconds"), 10),
        policy=hv.value("policy", _choice("spread", "pack"), "spread"),
        max_downtime_ms=hv.value("max_downtime_ms", _whole(1, 60_000, "milliseconds"), 300),
        bandwidth_mib=hv.value("bandwidth_mib", _whole(0, 1_000_000, "MiB/s"), 0),
        migration_timeout=hv.value("migration_timeout", _whole(1, 86400, "seconds"), 600),
        drain_parallel=hv.value("drain_parallel", _whole(1, 64), 2),
        failover=hv.value("failover", _bool, False),
        failover_after=hv.value("failover_after", _whole(10, 86400, "seconds"), 60),
        volume_device=hv.value("volume_device", _volume_device, None),
    )
    hv.finish()
    return config


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raise ConfigError with one line on any problem."""
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "somewhere"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: {where}: {problem}") from None
    base = source.resolve().parent
    top = _Section(data, "", source)

    state = top.section("state")
    state_config = StateConfig(path=state.value("path", _path_under(base)))
    state.finish()
    boot = top.section("boot")
    boot_config = BootConfig(
        enabled=boot.value("enabled", _bool, True),
        tftp_root=boot.value("tftp_root", _path_under(base), Path("/var/lib/cloudctl/tftp")),
        image_dir=boot.value("image_dir", _path_under(base), Path("/var/lib/cloudctl/images")),
        http_port=boot.value("http_port", _port, 8080),
        tftp_port=boot.value("tftp_port", _port, 69),
        tftp_max_transfers=boot.value("tftp_max_transfers", _whole(1, 100_000), 512),
        tftp_max_per_client=boot.value("tftp_max_per_client", _whole(1, 1000), 4),
        tftp_max_windowsize=boot.value("tftp_max_windowsize", _whole(1, 65535), 64),
        tftp_workers=boot.value("tftp_workers", _whole(0, 256), 0),
    )
    boot.finish()
    network_config = _load_network(top.section("network"))
    dhcp = top.section("dhcp")
    dhcp_config = DhcpConfig(
        enabled=dhcp.value("enabled", _bool, True),
        lease_time=dhcp.value("lease_time", _whole(60, 7 * 86400, "seconds"), 3600),
        discovery=dhcp.value("discovery", _bool, False),
        discovery_lease_time=dhcp.value("discovery_lease_time", _whole(10, 86400, "seconds"), 60),
    )
    dhcp.finish()
    dns = top.section("dns")
    dns_config = DnsConfig(
        enabled=dns.value("enabled", _bool, True),
        listen=dns.value(
            "listen",
            lambda v: tuple(_ipv4(a) for a in (v if isinstance(v, list) else [v])),
            (network_config.server,),
        ),
        port=dns.value("port", _port, 53),
        ttl=dns.value("ttl", _whole(0, 86400, "seconds"), 60),
    )
    dns.finish()
    storage = top.section("storage")
    storage_config = StorageConfig(
        volume_dir=storage.value(
            "volume_dir", _path_under(base), Path("/var/lib/cloudctl/volumes")
        ),
        volume_group=storage.value("volume_group", _string, None),
        serve_node=storage.value("serve_node", _string, None),
        serve_interfaces=storage.value(
            "serve_interfaces",
            lambda v: tuple(_interface(i) for i in (v if isinstance(v, list) else [v])),
            (),
        ),
    )
    if (storage_config.serve_node is None) != (not storage_config.serve_interfaces):
        storage.fail(
            storage.key_path("serve_node"),
            "set serve_node and serve_interfaces together (or neither)",
        )
    storage.finish()
    config = Config(
        source=source,
        log_level=top.value("log_level", _log_level, "INFO"),
        state=state_config,
        api=_load_api(top.section("api"), base),
        network=network_config,
        dhcp=dhcp_config,
        dns=dns_config,
        boot=boot_config,
        storage=storage_config,
        hypervisor=_load_hypervisor(top.section("hypervisor")),
    )
    top.finish()
    return config


def default_config_path() -> Path:
    return Path(os.environ.get("CLOUDCTL_CONFIG", DEFAULT_CONFIG_PATH))
