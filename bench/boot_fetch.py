"""Benchmark: fetch a node's kernel + initramfs from cloudctld over HTTP and over TFTP.

cloudctld runs in one namespace (TFTP and HTTP boot on), a client in another; the files are
the Debian guest kernel and a 32 MiB initramfs-sized file imported as an image. Prints the
seconds each way and the ratio. Usage (root): .venv/bin/python bench/boot_fetch.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import netlab
from tests.conftest import Daemon, write_config
from tests.guestkernel import guest_kernel

SERVER = "10.20.0.2"


def timed(lab: netlab.Lab, ns: str, argv: list[str]) -> float:
    started = time.perf_counter()
    lab.run(ns, argv, timeout=600)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kernel = guest_kernel().vmlinuz
    work = Path(tempfile.mkdtemp(prefix="cc-bootfetch-", dir="/tmp"))
    initrd = work / "initrd.img"
    initrd.write_bytes(os.urandom(32 << 20))
    size = kernel.stat().st_size + initrd.stat().st_size
    rows: dict[str, list[float]] = {
        "HTTP (curl)": [],
        "TFTP 1468 (curl)": [],
        "TFTP 1468 + windowsize 16 (atftp)": [],
    }
    with netlab.Lab() as lab:
        srv, cli = lab.netns("srv"), lab.netns("cli")
        lab.veth(srv, "srv0", cli, "cli0")
        lab.address(srv, "srv0", f"{SERVER}/24")
        lab.address(cli, "cli0", "10.20.0.9/24")
        daemon = Daemon(work, write_config(work, interface="srv0", boot=True), netns=srv)
        daemon.config.write_text(
            daemon.config.read_text().replace("log_level: debug", "log_level: warning")
        )
        daemon.start()
        try:
            daemon.cli("image", "import", "bench", "--kernel", str(kernel), "--initrd", str(initrd))
            out = work / "out"
            for _ in range(args.rounds):
                rows["HTTP (curl)"].append(
                    timed(
                        lab,
                        cli,
                        [
                            "curl",
                            "-sf",
                            "-o",
                            str(out),
                            f"http://{SERVER}:8080/images/bench/kernel",
                            "-o",
                            str(out),
                            f"http://{SERVER}:8080/images/bench/initrd",
                        ],
                    )
                )
                rows["TFTP 1468 (curl)"].append(
                    timed(
                        lab,
                        cli,
                        [
                            "curl",
                            "-sf",
                            "--tftp-blksize",
                            "1468",
                            "-o",
                            str(out),
                            f"tftp://{SERVER}/images/bench/kernel",
                            "-o",
                            str(out),
                            f"tftp://{SERVER}/images/bench/initrd",
                        ],
                    )
                )
                atftp = ["atftp", "--option", "blksize 1468", "--option", "windowsize 16", "-g"]
                rows["TFTP 1468 + windowsize 16 (atftp)"].append(
                    timed(lab, cli, [*atftp, "-r", "images/bench/kernel", "-l", str(out), SERVER])
                    + timed(lab, cli, [*atftp, "-r", "images/bench/initrd", "-l", str(out), SERVER])
                )
        finally:
            daemon.stop()
            subprocess.run(["rm", "-rf", str(work)], check=False)
    http = statistics.median(rows["HTTP (curl)"])
    print(f"kernel + initrd = {size / 1e6:.1f} MB, median of {args.rounds} rounds")
    print(f"{'path':<38}{'seconds':>9}{'MB/s':>9}{'x HTTP time':>13}")
    for name, values in rows.items():
        seconds = statistics.median(values)
        print(f"{name:<38}{seconds:>9.2f}{size / seconds / 1e6:>9.1f}{seconds / http:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
