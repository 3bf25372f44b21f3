"""AoE benchmark: one qemu guest (TCG) reads and writes the same 256 MiB file exported by
cloudctl's target and by vblade, one server at a time, at MTU 1500 and 9000. Run by bench/aoe.sh.

    python bench/aoe_bench.py run [--rounds N] [--mtus 1500,9000] [--servers cloudctl,vblade]
                                  [--rows read,write,randread] [--mib 256]
    python bench/aoe_bench.py backing      durability options for the backing file, host only
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.test_aoe_guest import AoeRig, GuestAgent, aoe_initramfs
from tests.guestkernel import guest_kernel
from tests.integration.test_aoe_target import TargetProcess, export
from tests.netlab import Lab

FIO = Path("/usr/bin/fio")
SIZE_MIB = 256
FIO_SECONDS = 15
FIO_DEPTH = 16
# Servers: cloudctl; cloudctl-py (READs answered in Python too: CLOUDCTL_AOE_NATIVE=0, to
# measure the C fast path); cloudctl@N (its buffer count set to N instead of the default);
# cloudctl-base, cloudctl run from another tree (AOE_BENCH_BASELINE: a directory holding a
# `cloudctl` package, e.g. a copy taken before a change), for before/after in one run; vblade;
# vblade-sync, which is vblade -s (O_SYNC): a WRITE answered only once on disk, the promise
# cloudctl keeps (plain vblade answers from the page cache). Each server gets its own device
# in the guest: shelf = its position in the list, slot 1.
ROWS = (("seq read", "MB/s"), ("seq write", "MB/s"), ("rand read 4k", "IOPS"))


def timed_dd(agent: GuestAgent, command: str) -> float:
    """MB/s (10^6 bytes/s) of a dd of SIZE_MIB in the guest. Busybox dd prints no rate, so the
    host times the command: the agent's round trip adds a few ms to runs of seconds."""
    started = time.monotonic()
    output = agent.run(command, timeout=600)
    took = time.monotonic() - started
    if f"{SIZE_MIB}+0 records out" not in output:
        raise RuntimeError(f"{command}: {output!r}")
    return (SIZE_MIB << 20) / took / 1e6


def fio_iops(output: str) -> float:
    """Read IOPS from fio --minimal (terse v3: field 8)."""
    for line in output.splitlines():
        fields = line.split(";")
        if len(fields) > 8 and fields[0] == "3":
            return float(fields[7])
    raise RuntimeError(f"no fio terse line in {output!r}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure(
    agent: GuestAgent, device: str, pid: int, rows: tuple[str, ...]
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The figures of `rows`, and the server's user and system CPU seconds during each."""
    dev = f"/dev/etherd/{device}"
    figures, cpu = {}, {}
    for row in rows:
        before = cpu_seconds(pid)
        if row == "seq read":
            command = f"dd if={dev} of=/dev/null bs=1M count={SIZE_MIB} iflag=direct"
            figures[row] = timed_dd(agent, command)
        elif row == "seq write":
            command = f"dd if=/dev/zero of={dev} bs=1M count={SIZE_MIB} oflag=direct"
            figures[row] = timed_dd(agent, command)
        else:
            fio = agent.run(
                f"fio --name=rr --filename={dev} --rw=randread --bs=4k --direct=1 "
                f"--ioengine=libaio --iodepth={FIO_DEPTH} --size={SIZE_MIB}M "
                f"--runtime={FIO_SECONDS} --time_based --randrepeat=1 --minimal",
                FIO_SECONDS + 120,
            )
            figures[row] = fio_iops(fio)
        after = cpu_seconds(pid)
        cpu[row] = (after[0] - before[0], after[1] - before[1])
    return figures, cpu


def settle(path: Path) -> None:
    """Same start for every server: nothing dirty in the page cache, the whole file cached."""
    os.sync()
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass


def bench_mtu(
    mtu: int, rounds: int, servers: list[str], rows: tuple[str, ...], workdir: Path
) -> dict:
    kernel = guest_kernel()
    # Uncompressed: fio's libraries make it ~85 MB, which gunzip under TCG would take seconds on.
    initrd = aoe_initramfs(kernel, workdir / "initrd-fio", binaries=(FIO,), compress=False)
    results: dict[tuple[str, str], list[float]] = {}
    with Lab() as lab:
        rig = AoeRig(lab, kernel, initrd, mtu)
        try:
            rig.storage_node("sn1")
            backing = lab.workdir / "disk.img"
            with backing.open("wb") as handle:  # allocated, not sparse: overwrites only
                for _ in range(SIZE_MIB):
                    handle.write(bytes(1 << 20))
            # A device idle longer than aoe_deadsecs is failed by the guest's driver, and with
            # three servers a device waits ~5 minutes between its turns: 180 s (the default)
            # failed vblade's e3.1 once (I/O error) and left one dd hanging.
            boot = rig.boot(memory=512, deadsecs=3600)
            print(f"MTU {mtu}: guest agent up {boot:.1f} s after qemu started", flush=True)
            for round_no in range(rounds):
                # Alternate who goes first: the machine's load drifts during a run.
                order = servers if round_no % 2 == 0 else list(reversed(servers))
                for server in order:
                    settle(backing)
                    shelf = servers.index(server) + 1
                    pid, stop = start_server(rig, server, shelf, backing)
                    try:
                        device = f"e{shelf}.1"
                        rig.wait_devices(device, timeout=30)
                        assert rig.agent is not None
                        figures, cpu = measure(rig.agent, device, pid, rows)
                    finally:
                        stop()
                    for row, value in figures.items():
                        results.setdefault((server, row), []).append(value)
                    print(
                        f"  round {round_no + 1} {server:8s} "
                        + "  ".join(
                            f"{row} {value:7.1f} (cpu {sum(cpu[row]):4.1f} s, "
                            f"user {cpu[row][0]:4.1f})"
                            for row, value in figures.items()
                        ),
                        flush=True,
                    )
        finally:
            rig.close()
    return results


def start_server(
    rig: AoeRig, server: str, shelf: int, backing: Path
) -> tuple[int, Callable[[], None]]:
    """Start a server on sn1 exporting eSHELF.1; returns its pid and how to stop it."""
    if server == "cloudctl" or server.startswith("cloudctl@"):
        settings = {"buffer_count": int(server[9:])} if "@" in server else {}
        target = rig.target("sn1", [export(shelf, 1, backing)], **settings)
        return target.pid, lambda: stop_target(rig.lab, target)
    if server == "cloudctl-py":
        target = TargetProcess(rig.lab, rig.nodes["sn1"], ["sn1e0"], [export(shelf, 1, backing)])
        target.env = {"CLOUDCTL_AOE_NATIVE": "0"}
        target.start()
        return target.pid, lambda: stop_target(rig.lab, target)
    if server == "cloudctl-base":
        tree = os.environ.get("AOE_BENCH_BASELINE")
        if not tree or not (Path(tree) / "cloudctl").is_dir():
            raise SystemExit("cloudctl-base needs AOE_BENCH_BASELINE=DIR holding a cloudctl/")
        target = BaselineTarget(rig.lab, rig.nodes["sn1"], ["sn1e0"], [export(shelf, 1, backing)])
        target.tree = Path(tree)
        target.start()
        return target.pid, lambda: stop_target(rig.lab, target)
    if server == "vblade":
        proc = rig.vblade("sn1", shelf, 1, backing)
    elif server == "vblade-sync":
        argv = ["vblade", "-s", str(shelf), "1", "sn1e0", str(backing)]
        proc = rig.lab.spawn(rig.nodes["sn1"], argv, rig.lab.workdir / "vblade-sync.log")
    else:
        raise SystemExit(
            f"unknown server {server!r}: use cloudctl, cloudctl-py, cloudctl@N, cloudctl-base, "
            "vblade, vblade-sync"
        )
    return proc.pid, lambda: rig.lab.stop(proc)


class BaselineTarget(TargetProcess):
    """`python -m cloudctl.cli.aoe serve` started in another tree: with -m the working directory
    comes first on sys.path, ahead of the venv's editable install of this one."""

    tree: Path

    def start(self) -> BaselineTarget:
        argv = [sys.executable, "-m", "cloudctl.cli.aoe", "serve", str(self.config)]
        self.proc = self.lab.spawn(self.ns, argv, self.log, cwd=self.tree)
        self.ready = self.wait_event("ready")
        return self


def stop_target(lab: Lab, target: TargetProcess) -> None:
    assert target.proc is not None
    lab.stop(target.proc)
    stopped = target.events()[-1]
    groups, seconds = stopped.get("batches") or 0, stopped.get("commit_seconds")
    cycle = f", {seconds / groups * 1000:.2f} ms per commit" if seconds and groups else ""
    print(
        f"    {type(target).__name__}: {stopped.get('received')} frames, {groups} batches "
        f"(largest {stopped.get('largest_batch')}), {stopped.get('commits')} fdatasyncs{cycle}, "
        f"{stopped.get('crashes')} crashes",
        flush=True,
    )


def table(all_results: dict[int, dict], servers: list[str], rows: tuple[str, ...]) -> str:
    ours, theirs = "cloudctl", "vblade"
    head = f"{'MTU':>5}  {'row':13s} {'unit':5s}" + "".join(f"{s:>14s}" for s in servers)
    compare = ours in servers and theirs in servers
    base = "cloudctl-base" in servers and theirs in servers
    lines = [
        head
        + (f"{ours + '/' + theirs:>17s}" if compare else "")
        + (f"{'base/' + theirs:>13s}" if base else "")
    ]
    misses = 0
    for mtu, results in all_results.items():
        for row, unit in ROWS:
            if row not in rows:
                continue
            cells = {s: statistics.median(results[(s, row)]) for s in servers}
            line = f"{mtu:>5}  {row:13s} {unit:5s}" + "".join(f"{cells[s]:14.1f}" for s in servers)
            if compare:
                ratio = cells[ours] / cells[theirs] if cells[theirs] else float("inf")
                misses += ratio < 1
                line += f"{ratio:16.2f}" + ("" if ratio >= 1 else "!")
            if base:
                ratio = cells["cloudctl-base"] / cells[theirs] if cells[theirs] else float("inf")
                line += f"{ratio:13.2f}"
            lines.append(line)
    if compare:
        lines.append(f"rows where cloudctl < vblade: {misses} (marked !)")
    return "\n".join(lines)


ROW_NAMES = {"read": "seq read", "write": "seq write", "randread": "rand read 4k"}


def run(args: argparse.Namespace) -> int:
    global SIZE_MIB
    SIZE_MIB = args.mib
    servers = args.servers.split(",")
    mtus = [int(m) for m in args.mtus.split(",")]
    try:
        rows = tuple(ROW_NAMES[r] for r in args.rows.split(","))
    except KeyError as exc:
        raise SystemExit(f"unknown row {exc}: use {','.join(ROW_NAMES)}") from None
    with tempfile.TemporaryDirectory(prefix="aoe-bench-") as tmp:
        all_results = {mtu: bench_mtu(mtu, args.rounds, servers, rows, Path(tmp)) for mtu in mtus}
    print(
        f"\nAoE: {SIZE_MIB} MiB dd bs=1M O_DIRECT; fio randread 4k libaio QD{FIO_DEPTH} "
        f"{FIO_SECONDS} s; median of {args.rounds} round(s), each server alone on the segment"
    )
    print(table(all_results, servers, rows))
    return 0


# --- host-only measurement behind backing.py's choice ----------------------------------------


def backing(args: argparse.Namespace) -> int:
    """MB/s of durable writes into a file the way the target could do them: buffered pwrite +
    one fdatasync per burst, O_DIRECT pwrite (aligned copy) + fdatasync per burst, O_DSYNC."""
    total = 16 << 20
    directory = Path(args.directory)
    frame = bytearray(os.urandom(9000))
    bounce = mmap.mmap(-1, 1 << 17)
    print(f"durable writes into a file in {directory} ({total >> 20} MiB per cell, MB/s)")
    print(f"{'frame':>6} {'burst':>6} {'buffered':>9} {'O_DIRECT':>9} {'O_DSYNC':>9}")
    with tempfile.NamedTemporaryFile(dir=directory) as scratch:
        scratch.write(bytes(64 << 20))
        scratch.flush()
        os.fsync(scratch.fileno())
        for size in (1024, 8704):
            for burst in (1, 16, 64):
                cells = []
                for mode in ("buffered", "direct", "dsync"):
                    flags = {"buffered": 0, "direct": os.O_DIRECT, "dsync": os.O_DSYNC}[mode]
                    fd = os.open(scratch.name, os.O_RDWR | flags)
                    try:
                        started, offset = time.perf_counter(), 0
                        while offset < total:
                            for _ in range(burst):
                                data = memoryview(frame)[36 : 36 + size]
                                if mode == "direct":
                                    bounce[:size] = data
                                    data = memoryview(bounce)[:size]
                                os.pwrite(fd, data, offset)
                                offset += size
                            if mode != "dsync":
                                os.fdatasync(fd)
                        cells.append(total / (time.perf_counter() - started) / 1e6)
                    finally:
                        os.close(fd)
                print(f"{size:>6} {burst:>6}" + "".join(f"{c:9.1f}" for c in cells), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("run")
    bench.add_argument("--rounds", type=int, default=int(os.environ.get("AOE_BENCH_ROUNDS", 2)))
    bench.add_argument("--mtus", default=os.environ.get("AOE_BENCH_MTUS", "1500,9000"))
    bench.add_argument("--servers", default=os.environ.get("AOE_BENCH_SERVERS", "cloudctl,vblade"))
    # Subsets for quick side-by-side checks while tuning; the published table uses the defaults.
    bench.add_argument("--rows", default=os.environ.get("AOE_BENCH_ROWS", ",".join(ROW_NAMES)))
    bench.add_argument("--mib", type=int, default=int(os.environ.get("AOE_BENCH_MIB", SIZE_MIB)))
    bench.set_defaults(func=run)
    durability = sub.add_parser("backing")
    durability.add_argument("--directory", default="/var/tmp")
    durability.set_defaults(func=backing)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
