"""`cloudctld`: the config-node daemon, one asyncio process wiring store, jobs and API.

Runs in the foreground and logs to stderr. Bad configuration or an unusable state store ends
it at once with one line and exit status 2; SIGTERM/SIGINT shut it down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cloudctl import __version__
from cloudctl.aoe.target import AoeTargetError
from cloudctl.api import instances
from cloudctl.api.base import App
from cloudctl.api.server import ApiServer, ApiStartError
from cloudctl.config import Config, ConfigError, default_config_path, load_config
from cloudctl.dns.inventory import InventoryZone
from cloudctl.dns.server import DnsServer
from cloudctl.dns.zone import DnsError, ZoneSettings
from cloudctl.jobs import TEST_JOB, JobRunner
from cloudctl.maintenance import StorageCoordinator
from cloudctl.pxe.bootfiles import PACKAGED_FILES, BootFiles
from cloudctl.pxe.catalog import BootCatalog
from cloudctl.pxe.dhcp.policy import DhcpPolicy, DhcpSettings
from cloudctl.pxe.dhcp.server import DhcpServer, DhcpStartError
from cloudctl.pxe.http import HttpBootError, HttpBootServer
from cloudctl.pxe.tftp.server import TftpServer, TftpStartError
from cloudctl.state import StateError
from cloudctl.state.sqlite import SqliteStore
from cloudctl.state.store import Change
from cloudctl.xen.hosts import HostPool, start_libvirt_events
from cloudctl.xen.lifecycle import Hypervisors
from cloudctl.xen.moves import Mover
from cloudctl.xen.reconcile import Reconciler

log = logging.getLogger("cloudctld")

EXIT_STARTUP = 2


def _hypervisors(store: SqliteStore, config: Config) -> tuple[Hypervisors, Mover, Reconciler]:
    hv = config.hypervisor
    start_libvirt_events()
    pool = HostPool(hv.uri, connect_timeout=hv.connect_timeout, call_timeout=hv.call_timeout)
    hypervisors = Hypervisors(store, config, pool)
    return hypervisors, Mover(hypervisors), Reconciler(hypervisors)


def _storage_backend(config: Config):
    if config.storage.volume_group is None:
        return config.storage.volume_dir
    from cloudctl.aoe.lvm import LvmVolumes

    return LvmVolumes(config.storage.volume_group)


def _image_url(config: Config):
    """Storage nodes fetch image disks from the HTTP boot server; None when it is off."""
    if not config.boot.enabled:
        return None
    base = f"http://{config.network.server}:{config.boot.http_port}/images"
    return lambda image: f"{base}/{image}/disk"


class StartupError(Exception):
    """cloudctld cannot start; one line for the operator."""


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run every service until SIGTERM or SIGINT."""
    store = SqliteStore(config.state.path)
    try:
        await store.open()
    except StateError as exc:
        raise StartupError(str(exc)) from None
    coordinator = StorageCoordinator(store, _image_url(config))
    hypervisors, mover, reconciler = _hypervisors(store, config)
    runner = JobRunner(
        store, [TEST_JOB, coordinator.job_kind(), *instances.job_kinds(hypervisors, mover)]
    )
    app = App(config, store, runner)
    app.storage = coordinator
    app.hypervisors = hypervisors
    coordinator.hypervisors, coordinator.mover = hypervisors, mover
    app.reconciler = reconciler

    async def failover(node: str) -> None:
        await runner.submit("node-failover", {"node": node}, Change("cloudctld", "auto failover"))

    reconciler.failover = failover
    services: list = [reconciler]
    if config.storage.serve_node is not None:
        from cloudctl.aoe.serve import LocalStorageNode  # AF_PACKET: only when asked for

        services.append(
            LocalStorageNode(
                coordinator,
                config.storage.serve_node,
                list(config.storage.serve_interfaces),
                _storage_backend(config),
            )
        )
    api = ApiServer(app, config.api)
    catalog = BootCatalog(store, config)
    if config.dhcp.enabled:
        settings = DhcpSettings.from_config(config, catalog.boot_offer)
        dhcp = DhcpServer(DhcpPolicy(settings, store), store, config.network.interface)
        services.append(dhcp)
        app.counters["dhcp"] = dhcp.counters
    if config.boot.enabled:
        files = BootFiles(
            roots=(config.boot.tftp_root,),
            render=catalog.render,
            packaged=PACKAGED_FILES,
            mounts=(("images/", config.boot.image_dir),),
        )
        http = HttpBootServer(
            files,
            host=str(config.network.server),
            port=config.boot.http_port,
            mac_lookup=catalog.mac_of,
        )
        services.append(http)
        app.counters["http"] = http.counters
        tftp = TftpServer(
            files,
            interface=config.network.interface,
            port=config.boot.tftp_port,
            max_transfers=config.boot.tftp_max_transfers,
            max_per_client=config.boot.tftp_max_per_client,
            max_windowsize=config.boot.tftp_max_windowsize,
            workers=config.boot.tftp_workers,
        )
        services.append(tftp)
        app.counters["tftp"] = tftp.counters
    if config.dns.enabled:
        listen = [(str(address), config.dns.port) for address in config.dns.listen]
        try:
            dns = DnsServer(InventoryZone(store), ZoneSettings.from_config(config), listen)
        except DnsError as exc:
            await store.close()
            raise StartupError(f"dns: {exc}") from None
        services.append(dns)
        app.counters["dns"] = dns.counters
    try:
        try:
            await runner.recover()
            for service in services:
                await service.start()
            await api.start()
        except (
            ApiStartError,
            StateError,
            DhcpStartError,
            DnsError,
            HttpBootError,
            TftpStartError,
            AoeTargetError,
        ) as exc:
            raise StartupError(str(exc)) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info(
            "cloudctld %s ready: state %s, %d nodes",
            __version__,
            config.state.path,
            store.count_nodes(),
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down")
    finally:
        await api.close()
        for service in services:
            await service.close()
        await runner.shutdown()
        await store.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloudctld", description="cloudctl config-node daemon")
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default: %(default)s)"
    )
    parser.add_argument("--version", action="version", version=f"cloudctld {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config or default_config_path())
    except ConfigError as exc:
        print(f"cloudctld: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        print(f"cloudctld: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
