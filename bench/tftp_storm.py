"""Helpers of bench/tftp.sh: run cloudctl's TFTP server standalone, and time N parallel fetches.

  serve --root DIR --interface IF [--max-windowsize N] [--workers N]   TftpServer until SIGTERM
  fetch --tool curl|atftp --server IP --file NAME --clients N --blksize B [--windowsize W]
        --source PATH --out-dir DIR [--bind-prefix 10.78.1.]
        prints "BYTES SECONDS FAILED CLIENT_CPU_SECONDS" after checking every copy

Run `fetch` inside the client namespace: it starts the clients itself, so the wall time is
from the first client's start to the last one's exit.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def serve(args: argparse.Namespace) -> None:
    from cloudctl.pxe.bootfiles import BootFiles, no_rendering
    from cloudctl.pxe.tftp.server import TftpServer

    files = BootFiles(roots=(Path(args.root),), render=no_rendering, packaged={})
    server = TftpServer(
        files,
        interface=args.interface,
        max_transfers=args.max_transfers,
        max_per_client=args.max_per_client,
        max_windowsize=args.max_windowsize,
        workers=args.workers,
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.close()
    logging.getLogger("tftp-bench").warning("counters: %s", dict(server.counters))


def client_argv(args: argparse.Namespace, index: int, out: Path) -> list[str]:
    if args.tool == "curl":
        argv = ["curl", "-sS", "--tftp-blksize", str(args.blksize), "-o", str(out)]
        if args.bind_prefix:
            # One source address per client, as in a rack of booting nodes: per-client caps
            # apply per node, not to the whole storm.
            argv += ["--interface", f"{args.bind_prefix}{index + 1}"]
        return [*argv, f"tftp://{args.server}/{args.file}"]
    argv = ["atftp", "--option", f"blksize {args.blksize}"]
    if args.windowsize:
        argv += ["--option", f"windowsize {args.windowsize}"]
    return [*argv, "-g", "-r", args.file, "-l", str(out), args.server]


def digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fetch(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [out_dir / f"copy-{i}" for i in range(args.clients)]
    procs: list[subprocess.Popen[bytes]] = []

    def stop(signum: int, frame: object) -> None:
        # bench/tftp.sh stops us by PID on an interrupt: take the clients along.
        for proc in procs:
            proc.kill()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    procs += [
        subprocess.Popen(
            client_argv(args, index, out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for index, out in enumerate(outs)
    ]
    errors = [proc.communicate(timeout=args.timeout)[1] for proc in procs]
    elapsed = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    want = digest(Path(args.source))
    total = failed = 0
    for proc, out, err in zip(procs, outs, errors, strict=True):
        good = proc.returncode == 0 and out.exists() and digest(out) == want
        if good:
            total += out.stat().st_size
        else:
            failed += 1
            print(f"client failed (exit {proc.returncode}): {err.decode()[-200:]}", file=sys.stderr)
        out.unlink(missing_ok=True)
    print(total, f"{elapsed:.4f}", failed, f"{usage.ru_utime + usage.ru_stime:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--root", required=True)
    p.add_argument("--interface", required=True)
    p.add_argument("--max-transfers", type=int, default=512)
    p.add_argument("--max-per-client", type=int, default=4)
    p.add_argument("--max-windowsize", type=int, default=64)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="0: transfers on the event loop"
    )
    p = sub.add_parser("fetch")
    p.add_argument("--tool", choices=("curl", "atftp"), required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--source", required=True, help="the served file, to check each copy")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--blksize", type=int, default=1468)
    p.add_argument("--windowsize", type=int, default=0)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--bind-prefix", help="curl client i binds to PREFIX<i+1>")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        asyncio.run(serve(args))
        return 0
    return fetch(args)


if __name__ == "__main__":
    sys.exit(main())
