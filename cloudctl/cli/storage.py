"""`cloudctl storage ...`: status of volumes and mirrors, and storage-node maintenance."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cloudctl.aoe.drbd import DrbdStatus
from cloudctl.aoe.drbdreport import status_from_json
from cloudctl.cli.client import ApiClient, CliError
from cloudctl.cli.job import watch_job
from cloudctl.cli.output import format_size, format_time, print_json, print_table
from cloudctl.config import default_config_path, load_config
from cloudctl.maintenance import progress_bar


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("storage", help="storage nodes: status and maintenance")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    status = verbs.add_parser(
        "status", help="every volume's legs, md and DRBD state, and resync progress"
    )
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    status.set_defaults(run=_status)

    serve = verbs.add_parser("serve", help="run this storage node: export its volumes over AoE")
    serve.add_argument("--node", required=True, help="this storage node's name in the inventory")
    serve.add_argument(
        "--interface",
        action="append",
        required=True,
        help="serve AoE on this interface (repeat for several)",
    )
    serve.add_argument(
        "--volume-dir",
        type=Path,
        help="where volume files live (default: storage.volume_dir of the config)",
    )
    serve.add_argument(
        "--volume-group",
        help="keep legs as LVM logical volumes in this volume group instead of files "
        "(default: storage.volume_group of the config)",
    )
    serve.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between pulls of the node's legs from cloudctld",
    )
    serve.set_defaults(run=_serve)

    mirrors = verbs.add_parser(
        "mirror-agent",
        help="run on a node using mirrored volumes: report its md arrays, drop legs going into "
        "maintenance, re-add legs that come back",
    )
    mirrors.add_argument("--node", required=True, help="this node's name in the inventory")
    mirrors.add_argument(
        "--interval", type=float, default=2.0, help="seconds between reports (default 2)"
    )
    mirrors.set_defaults(run=_mirror_agent)

    maintenance = verbs.add_parser("maintenance", help="take a storage node out of service")
    actions = maintenance.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, helptext in (
        (
            "start",
            "fail its legs and stop its exports (refused if a volume would lose its last "
            "healthy leg)",
        ),
        ("finish", "export its legs again; the mirrors resync"),
    ):
        sub = actions.add_parser(action, help=helptext)
        sub.add_argument("snode")
        sub.add_argument("--reason", help="why; recorded in the audit log")
        sub.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="seconds to wait for the node's storage agent (default 60)",
        )
        sub.add_argument("--no-wait", action="store_true", help="print the job id and return")
        sub.set_defaults(run=_maintenance)


def _serve(args: argparse.Namespace, client: ApiClient) -> int:
    from cloudctl.aoe.serve import serve  # only storage nodes need the AoE target

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    volumes = args.volume_dir
    if volumes is None and args.volume_group is None:
        storage = load_config(args.config or default_config_path()).storage
        volumes = storage.volume_dir if storage.volume_group is None else None
        args.volume_group = storage.volume_group
    if args.volume_group is not None:
        from cloudctl.aoe.lvm import LvmVolumes, check_volume_group

        try:
            volumes = LvmVolumes(check_volume_group(args.volume_group))
            volumes.prepare()  # the group must exist: say so now, in one line
        except OSError as exc:
            raise CliError(str(exc)) from None
    asyncio.run(serve(client, args.node, args.interface, volumes, args.interval))
    return 0


def _mirror_agent(args: argparse.Namespace, client: ApiClient) -> int:
    from cloudctl.aoe.mirroragent import LocalMachine, MirrorAgent

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    node = args.node

    def exchange(arrays: list) -> list:
        answer = client.request("POST", f"/v1/storage/mirrors/{node}", {"arrays": arrays})
        return answer["volumes"]

    agent = MirrorAgent(exchange, LocalMachine(), interval=args.interval)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await agent.run(stop)

    asyncio.run(run())
    return 0


def _mirror_state(volume: dict, mirrors: dict) -> str:
    """The array's state as the nodes using it last reported it: clean, degraded, resync 42%."""
    seen = []
    for node, report in sorted(mirrors.items()):
        for array in report["arrays"]:
            if array["volume"] != volume["name"] or not array.get("array"):
                continue
            sync = array.get("sync")
            if sync:
                seen.append(
                    f"{node}: {sync['action']} {progress_bar(sync['percent'] / 100)} "
                    f"{sync['percent']:.0f}%"
                )
            else:
                seen.append(f"{node}: {'clean' if array.get('clean') else 'degraded'}")
    return "; ".join(seen)


def _drbd_text(device: DrbdStatus, peer: str) -> str:
    """ "Primary/UpToDate -> sn2 Secondary/Inconsistent SyncSource [###...] 48%"."""
    text = f"{device.role}/{device.disk} -> {peer}"
    if not device.connected:
        text += f" {device.connection}"  # the peer's role and disk are unknown then
    else:
        text += f" {device.peer_role}/{device.peer_disk}"
        if device.sync is not None:
            percent = device.sync.percent
            return f"{text} {device.replication} {progress_bar(percent / 100)} {percent:.0f}%"
        if device.in_sync:
            return f"{text} in sync"
        text += f" {device.replication}"
    if device.out_of_sync_kib:
        text += f", {format_size(device.out_of_sync_kib, ('KiB', 'MiB', 'GiB'))} out of sync"
    return text


def _peer_name(device: DrbdStatus, snode: str, volume: dict | None) -> str:
    """The peer's node name: DRBD 9 says it; 8.4 does not, the volume's other leg does."""
    if device.peer not in (None, "peer"):
        return device.peer
    others = {leg["snode"] for leg in volume["legs"]} - {snode} if volume else set()
    return others.pop() if len(others) == 1 else "peer"


def _drbd_states(status: dict) -> tuple[dict[str, list[str]], list[str]]:
    """Volume name -> "sn1: ..." texts of the DRBD resource named after it on each storage
    node; and lines for the devices that match no volume."""
    volumes = {volume["name"]: volume for volume in status["volumes"]}
    states: dict[str, list[str]] = {}
    unmatched = []
    for snode, report in sorted(status.get("drbd", {}).items()):
        for data in report["resources"]:
            device = status_from_json(data)
            volume = volumes.get(device.resource) if device.resource else None
            where = (
                snode if device.volume in (None, 0) else f"{snode} (DRBD volume {device.volume})"
            )
            text = _drbd_text(device, _peer_name(device, snode, volume))
            if volume is not None:
                states.setdefault(volume["name"], []).append(f"{where}: {text}")
            elif device.resource is None:
                unmatched.append(f"drbd minor {device.minor} on {where} (unnamed): {text}")
            else:
                unmatched.append(f"drbd {device.resource} on {where} (no such volume): {text}")
    return states, unmatched


def _status(args: argparse.Namespace, client: ApiClient) -> int:
    status = client.request("GET", "/v1/storage")
    if args.output == "json":
        print_json(status)
        return 0
    drbd_states, drbd_unmatched = _drbd_states(status)
    rows = []
    for volume in status["volumes"]:
        states = [leg["state"] for leg in volume["legs"]]
        health = (
            "clean"
            if all(s == "active" for s in states)
            else ("resyncing" if "resyncing" in states else "degraded")
        )
        legs = " ".join(f"{leg['device']}@{leg['snode']}:{leg['state']}" for leg in volume["legs"])
        md = _mirror_state(volume, status["mirrors"])
        state = "; ".join([*([md] if md else []), *drbd_states.get(volume["name"], [])])
        rows.append((volume["name"], volume["size"], health, legs, state))
    print_table(("VOLUME", "SIZE", "MIRROR", "LEGS", "ON NODES"), rows)
    for line in drbd_unmatched:
        print(line)
    if status["in_maintenance"]:
        print(f"in maintenance: {', '.join(status['in_maintenance'])}")
    for snode, agent in sorted(status["agents"].items()):
        print(
            f"agent {snode}: {len(agent['exports'])} exports, "
            f"reported {format_time(agent['reported_at'])}"
        )
    for snode, report in sorted(status.get("drbd", {}).items()):
        count = len(report["resources"])
        print(
            f"drbd {snode}: {count} device{'s' * (count != 1)}, "
            f"reported {format_time(report['reported_at'])}"
        )
    return 0


def _maintenance(args: argparse.Namespace, client: ApiClient) -> int:
    body: dict = {"timeout": args.timeout}
    if args.reason:
        body["reason"] = args.reason
    job = client.request("POST", f"/v1/storage/{args.snode}/maintenance/{args.action}", body)
    sys.stdout.write(f"job {job['id']} {job['state']}\n")
    return 0 if args.no_wait else watch_job(client, job["id"])
