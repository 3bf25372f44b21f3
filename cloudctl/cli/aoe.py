"""`cloudctl aoe ...`: probe a segment for AoE targets, serve exports from a JSON file.

Neither verb talks to the daemon: both work on the local machine's interfaces (as root). Also
runnable without the main CLI as `python -m cloudctl.cli.aoe VERB ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from cloudctl.cli.client import CliError
from cloudctl.cli.output import format_size, print_json, print_table

__all__ = ["load_target_config", "main", "register"]


def register(nouns: argparse._SubParsersAction) -> None:
    parser = nouns.add_parser("aoe", help="ATA over Ethernet: probe for targets, serve exports")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    probe = verbs.add_parser("probe", help="list the AoE targets that answer on an interface")
    probe.add_argument("interface")
    probe.add_argument(
        "--timeout", type=float, default=1.0, help="seconds to collect answers (default 1)"
    )
    probe.add_argument("-o", "--output", choices=("text", "json"), default="text")
    probe.set_defaults(run=_probe)

    serve = verbs.add_parser(
        "serve",
        help="serve AoE exports in the foreground",
        description="Serve the exports of a JSON file. SIGHUP re-reads its exports, SIGUSR1 "
        "prints the counters as a JSON line, SIGTERM stops.",
    )
    serve.add_argument("config", type=Path, help="JSON: interfaces, buffer_count, exports")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(run=_serve)


# --- probe ------------------------------------------------------------------------------------


def _probe(args: argparse.Namespace, client: object = None) -> int:
    from cloudctl.aoe.probe import ProbeError, probe  # scapy loads in ~0.5 s: only when probing

    if not 0 < args.timeout <= 60:
        raise CliError("--timeout must be between 0 and 60 seconds")
    try:
        targets = probe(args.interface, args.timeout)
    except ProbeError as exc:
        raise CliError(str(exc)) from None
    if args.output == "json":
        print_json([t.as_dict() for t in targets])
        return 0
    print_table(
        ("TARGET", "MAC", "SIZE", "SECTORS", "BUFFERS", "FIRMWARE", "MAX-SECTORS", "CONFIG"),
        [
            (
                t.name,
                t.mac,
                _size(t.sectors),
                t.sectors,
                t.buffer_count,
                f"{t.firmware:#06x}",
                t.max_sectors,
                t.config_string or None,
            )
            for t in targets
        ],
    )
    return 0


def _size(sectors: int | None) -> str | None:
    if sectors is None:
        return None
    return format_size(sectors * 512.0, ("B", "KiB", "MiB", "GiB", "TiB"))


# --- serve ------------------------------------------------------------------------------------


def load_target_config(path: Path) -> tuple[list[str], list[Any], int]:
    """(interfaces, export specs, buffer count) from a JSON file like
    {"interfaces": ["eth1"], "buffer_count": 64, "exports": [{"shelf": 1, "slot": 1,
    "path": "/srv/v1.img", "allowed_macs": ["52:54:00:12:34:56"], "config_string": "",
    "read_only": false}]}; allowed_macs null or absent serves every host."""
    from cloudctl.aoe.target import DEFAULT_BUFFER_COUNT, AoeTargetError, ExportSpec

    try:
        raw = json.loads(path.read_text())
        exports = [
            ExportSpec(
                int(e["shelf"]),
                int(e["slot"]),
                Path(e["path"]),
                None if e.get("allowed_macs") is None else frozenset(e["allowed_macs"]),
                str(e.get("config_string", "")).encode(),
                bool(e.get("read_only", False)),
            )
            for e in raw.get("exports", [])
        ]
        interfaces = [str(name) for name in raw["interfaces"]]
        buffer_count = int(raw.get("buffer_count", DEFAULT_BUFFER_COUNT))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AoeTargetError) as exc:
        raise CliError(f"{path}: {exc}") from None
    return interfaces, exports, buffer_count


def _event(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _serve(args: argparse.Namespace, client: object = None) -> int:
    from cloudctl.aoe.target import AoeTargetError

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(message)s")
    try:
        return asyncio.run(_serve_until_stopped(args.config))
    except AoeTargetError as exc:
        raise CliError(str(exc)) from None


async def _serve_until_stopped(config: Path) -> int:
    from cloudctl.aoe.target import AoeTarget, AoeTargetError

    interfaces, exports, buffer_count = load_target_config(config)
    target = AoeTarget(exports, interfaces, buffer_count=buffer_count)
    await target.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: _event("stats", **dataclasses.asdict(target.stats()))
    )

    async def reload_forever() -> None:
        while True:
            await reloads.get()
            try:
                _, specs, _ = load_target_config(config)
                await target.update_exports(specs)
            except (CliError, AoeTargetError) as exc:
                _event("reload-failed", error=str(exc))
            else:
                _event("reloaded", exports=[s.name for s in target.exports])

    reloader = asyncio.create_task(reload_forever())
    _event(
        "ready",
        interfaces=[dataclasses.asdict(i) for i in target.interfaces()],
        exports=[s.name for s in target.exports],
    )
    try:
        await stopping.wait()
    finally:
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        stats = target.stats()
        await target.close()
        _event("stopped", **dataclasses.asdict(stats))
    return 0


# --- standalone entry point -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m cloudctl.cli.aoe VERB ...`: the `aoe` noun without the daemon-facing CLI."""
    from cloudctl.cli.main import EXIT_FAILED, OneLineParser

    parser = OneLineParser(prog="cloudctl")
    register(parser.add_subparsers(dest="noun", required=True, parser_class=OneLineParser))
    args = parser.parse_args(["aoe", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.run(args, None) or 0
    except CliError as exc:
        sys.stderr.write(f"cloudctl: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
