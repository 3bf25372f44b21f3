"""Benchmark: register 10,000 nodes through cloudctld's API; `node show` p99 at 10 and 10,000 nodes.

Runs a real cloudctld (own temp state and socket, a /16 cloud subnet) and drives it over the
Unix socket with several keep-alive clients, as many operators' scripts would.
Usage: .venv/bin/python bench/api_register.py [--nodes 10000] [--clients 16]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudctl.cli.client import ApiClient
from tests.conftest import Daemon, write_config


def _mac(i: int) -> str:
    return f"52:54:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def register(socket: Path, first: int, last: int, clients: int) -> list[float]:
    def worker(indices: range) -> list[float]:
        client = ApiClient(str(socket))
        latencies = []
        for i in indices:
            start = time.perf_counter()
            client.request("POST", "/v1/nodes", {"mac": _mac(i), "role": "hnode"})
            latencies.append(time.perf_counter() - start)
        client.close()
        return latencies

    chunks = [range(first + k, last, clients) for k in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        return [lat for part in pool.map(worker, chunks) for lat in part]


def show_latencies(socket: Path, names: list[str], count: int) -> list[float]:
    client = ApiClient(str(socket))
    latencies = []
    for name in random.choices(names, k=count):
        start = time.perf_counter()
        client.request("GET", f"/v1/nodes/{name}")
        latencies.append(time.perf_counter() - start)
    client.close()
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--shows", type=int, default=2000)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="cc-bench-", dir="/tmp"))
    daemon = Daemon(directory, write_config(directory, subnet="10.64.0.0/16"))
    daemon.config.write_text(
        daemon.config.read_text().replace("log_level: debug", "log_level: warning")
    )
    daemon.start()
    try:
        register(daemon.socket, 0, 10, 1)
        small = show_latencies(daemon.socket, [f"hn{i}" for i in range(1, 11)], args.shows)
        start = time.perf_counter()
        latencies = register(daemon.socket, 10, args.nodes, args.clients)
        elapsed = time.perf_counter() - start
        names = [f"hn{i}" for i in range(1, args.nodes + 1)]
        large = show_latencies(daemon.socket, names, args.shows)
        count = ApiClient(str(daemon.socket)).request("GET", "/v1/health")["nodes"]
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)

    registered = args.nodes - 10
    print(
        f"registered {registered} nodes in {elapsed:.2f} s with {args.clients} clients: "
        f"{registered / elapsed:.0f} registrations/s "
        f"(p50 {statistics.median(latencies) * 1e3:.2f} ms, p99 {p99(latencies) * 1e3:.2f} ms)"
    )
    print(
        f"node show p99 at {10:>6} nodes: {p99(small) * 1e3:.3f} ms "
        f"(p50 {statistics.median(small) * 1e3:.3f} ms)"
    )
    print(
        f"node show p99 at {count:>6} nodes: {p99(large) * 1e3:.3f} ms "
        f"(p50 {statistics.median(large) * 1e3:.3f} ms)"
    )
    print(f"ratio p99(large)/p99(small): {p99(large) / p99(small):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
