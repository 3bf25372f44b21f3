"""Shared fixtures: a real cloudctld in a subprocess with its own config, state and socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cloudctl.cli.client import ApiClient, CliError

CONFIG_TEMPLATE = """\
log_level: debug
state:
  path: {state}
api:
  socket: {socket}
{tcp}
network:
  interface: {interface}
  subnet: {subnet}
  gateway: {gateway}
  server: {server}
  dynamic_range: [{dyn_first}, {dyn_last}]
  domain: cloud.test
dhcp:
  enabled: {dhcp}
  discovery: {discovery}
boot:
  enabled: {boot}
  tftp_root: {directory}/tftp
  image_dir: {directory}/images
  http_port: {http_port}
dns:
  enabled: {dns}
  listen: [{dns_listen}]
  port: {dns_port}
"""


def write_config(
    directory: Path,
    *,
    tcp_port: int | None = None,
    token: str | None = None,
    subnet: str = "10.20.0.0/24",
    interface: str = "cc0",
    dhcp: bool = False,
    discovery: bool = False,
    dns_port: int | None = None,
    dns_listen: str = "127.0.0.1",
    boot: bool = False,
    http_port: int = 8080,
    hypervisor: dict | None = None,
    storage: dict | None = None,
) -> Path:
    """A config in `directory`; DHCP and DNS stay off unless a test asks for them.

    `hypervisor`: keys of the config's hypervisor section (e.g. uri, flavour, poll_interval).
    """
    import ipaddress

    net = ipaddress.IPv4Network(subnet)
    hosts = [net.network_address + i for i in (1, 2)]
    dyn_first = net.broadcast_address - 55
    dyn_last = net.broadcast_address - 5
    tcp = ""
    if tcp_port is not None:
        tcp = f"  tcp:\n    host: 127.0.0.1\n    port: {tcp_port}\n    token: {token}\n"
    path = directory / "cloudctl.yaml"
    path.write_text(
        CONFIG_TEMPLATE.format(
            state=directory / "state.db",
            socket=directory / "api.sock",
            tcp=tcp,
            subnet=subnet,
            gateway=hosts[0],
            server=hosts[1],
            dyn_first=dyn_first,
            dyn_last=dyn_last,
            interface=interface,
            dhcp=str(dhcp).lower(),
            discovery=str(discovery).lower(),
            dns=str(dns_port is not None).lower(),
            dns_listen=dns_listen,
            dns_port=dns_port or 53,
            boot=str(boot).lower(),
            directory=directory,
            http_port=http_port,
        )
        + _section("hypervisor", hypervisor)
        + _section("storage", storage)
    )
    return path


def _section(name: str, values: dict | None) -> str:
    if not values:
        return ""
    return f"{name}:\n" + "".join(
        f"  {key}: {json.dumps(value)}\n" for key, value in values.items()
    )


class Daemon:
    """A cloudctld subprocess; start/stop/kill it and talk to it through the real CLI."""

    def __init__(self, directory: Path, config: Path, *, netns: str | None = None) -> None:
        self.directory = directory
        self.config = config
        self.netns = netns  # run inside this network namespace (its sockets stay on the fs)
        self.socket = directory / "api.sock"
        self.proc: subprocess.Popen | None = None
        self.log = directory / "cloudctld.log"

    def start(self, timeout: float = 15.0) -> None:
        log = self.log.open("ab")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "cloudctl.daemon", "--config", str(self.config)],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        client = ApiClient(str(self.socket), timeout=2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"cloudctld exited {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                client.request("GET", "/v1/health")
                client.close()
                return
            except CliError:
                time.sleep(0.05)
        raise RuntimeError(f"cloudctld did not come up: {self.log.read_text()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "cloudctl.cli.main", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"cloudctl {' '.join(args)} failed: {result.stderr}")
        return result

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def api(self, method: str, path: str, body: dict | None = None) -> object:
        client = ApiClient(str(self.socket))
        try:
            return client.request(method, path, body)
        finally:
            client.close()


@pytest.fixture
def short_tmp():
    # Unix socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp):
    d = Daemon(short_tmp, write_config(short_tmp))
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


@pytest.fixture
def env_without_config(monkeypatch):
    monkeypatch.setenv("CLOUDCTL_CONFIG", os.devnull + ".absent")
