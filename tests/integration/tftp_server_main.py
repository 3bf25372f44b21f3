"""Run cloudctl's TftpServer standalone (no cloudctld) for the real-peer tests in a namespace.

`tftp_server_main.py --root DIR --interface IF --stats SOCK [--port N] [caps]` serves DIR and a
rendered `pxelinux.cfg/01-<mac>`, logs to stderr and answers each connection on the Unix
socket SOCK with its counters as JSON. Prints "TFTP ready" once listening; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cloudctl.pxe.bootfiles import BootFiles
from cloudctl.pxe.tftp.server import TftpServer

_PER_MAC = re.compile(r"^pxelinux\.cfg/01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})$")


def rendered_config(mac: str, client_ip: str | None) -> bytes:
    """What the test renderer answers for pxelinux.cfg/01-<mac> (mac with dashes)."""
    return (
        f"# rendered for {mac} asking from {client_ip}\n"
        "DEFAULT linux\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img\n"
    ).encode()


def render(name: str, mac: str | None, client_ip: str | None) -> bytes | None:
    match = _PER_MAC.match(name)
    return rendered_config(match.group(1), client_ip) if match else None


async def serve(args: argparse.Namespace) -> None:
    files = BootFiles(roots=(Path(args.root),), render=render, packaged={})
    server = TftpServer(
        files,
        interface=args.interface,
        port=args.port,
        max_transfers=args.max_transfers,
        max_per_client=args.max_per_client,
        max_windowsize=args.max_windowsize,
        mtu=args.mtu,
    )
    await server.start()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = dict(server.counters, active=server.active)
        writer.write(json.dumps(stats).encode())
        await writer.drain()
        writer.close()

    stats_server = await asyncio.start_unix_server(answer, path=args.stats) if args.stats else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("TFTP ready", file=sys.stderr, flush=True)
    await stop.wait()
    if stats_server is not None:
        stats_server.close()
    await server.close()
    print(f"TFTP stopped: {json.dumps(dict(server.counters))}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--interface")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--stats", help="Unix socket answering with the counters as JSON")
    parser.add_argument("--max-transfers", type=int, default=512)
    parser.add_argument("--max-per-client", type=int, default=4)
    parser.add_argument("--max-windowsize", type=int, default=64)
    parser.add_argument("--mtu", type=int, help="instead of the interface's")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
