"""Helpers for bench/dhcp.sh: perfdhcp's client MACs, registering them, parsing its reports.

No third-party imports, so the system python3 runs it; only `register` needs the repository's
venv (it uses cloudctl's own ApiClient). `python3 bench/dhcp_rate.py selfcheck` tests the
MAC derivation; `pcap-check` compares it with DISCOVERs captured from a real perfdhcp.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import struct
import sys
import time
from pathlib import Path

# perfdhcp's MAC generation (Kea 2.2, src/bin/perfdhcp/test_control.cc, generateMacAddress()
# and run()): with -R N >= 2 a SequentialGenerator(N) yields r = 0, 1, ..., N-1, 0, 1, ...
# (one per DISCOVER, in sending order; not random, whatever the man page's "randomize" says).
# r is added to the base MAC octet by octet from the last one, each octet wrapping on its
# own with no carry into the next (`uint8_t += uint32_t`, then `r >>= 8`), stopping once the
# remaining r is < 256. With -R 1 (or none) every client is the base MAC itself.


def _octets(base: str) -> list[int]:
    # perfdhcp accepts single or double colons between octets ("00::0c::01...").
    parts = [p for p in base.strip().lower().split(":") if p]
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"not a MAC address: {base!r}")
    return [int(p, 16) for p in parts]


def _format(octets: list[int]) -> str:
    return ":".join(f"{o:02x}" for o in octets)


def perfdhcp_mac(base: str, index: int) -> str:
    """The chaddr perfdhcp puts in the DISCOVER numbered `index` (0-based) of N >= 2 clients."""
    mac = _octets(base)
    r = index
    position = 5
    while position >= 0:
        mac[position] = (mac[position] + r) & 0xFF
        if r < 256:
            break
        r >>= 8
        position -= 1
    return _format(mac)


def perfdhcp_macs(base: str, count: int) -> list[str]:
    """The distinct client MACs of `perfdhcp -b mac=BASE -R COUNT`, in the order it uses them."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if count == 1:
        return [_format(_octets(base))]
    return [perfdhcp_mac(base, i) for i in range(count)]


def selfcheck() -> None:
    base = "00:0c:01:00:00:00"
    assert perfdhcp_macs(base, 1) == [base]
    macs = perfdhcp_macs(base, 10_000)
    assert macs[:3] == ["00:0c:01:00:00:00", "00:0c:01:00:00:01", "00:0c:01:00:00:02"]
    assert macs[255:257] == ["00:0c:01:00:00:ff", "00:0c:01:00:01:00"]
    assert macs[-1] == "00:0c:01:00:27:0f"  # 9999 = 0x270f
    assert len(set(macs)) == 10_000
    # No carry between octets: a base ending in ff wraps that octet alone.
    assert perfdhcp_macs("00:0c:01:00:00:ff", 3) == [
        "00:0c:01:00:00:ff",
        "00:0c:01:00:00:00",
        "00:0c:01:00:00:01",
    ]
    assert perfdhcp_mac("00:0c:01:00:10:ff", 0x101) == "00:0c:01:00:11:00"
    assert perfdhcp_mac("00:0c:01:00:00:00", 0x10203) == "00:0c:01:01:02:03"
    assert perfdhcp_macs("00::0C::01::02::03::04", 2) == ["00:0c:01:02:03:04", "00:0c:01:02:03:05"]


# --- pcap: which chaddrs did perfdhcp really send? ---------------------------------------


def discover_chaddrs(pcap: Path) -> list[str]:
    """chaddr of every DHCPDISCOVER in a classic pcap file (Ethernet, IPv4, UDP to port 67)."""
    data = pcap.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{pcap}: not a classic pcap file (tcpdump -w writes one)")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"{pcap}: link type {linktype}, expected Ethernet (1)")
    found = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        udp = ip[header:]
        if struct.unpack_from("!H", udp, 2)[0] != 67:
            continue
        bootp = udp[8:]
        if len(bootp) < 240 or bootp[0] != 1 or bootp[236:240] != b"\x63\x82\x53\x63":
            continue
        if _message_type(bootp[240:]) == 1:
            found.append(_format(list(bootp[28 : 28 + bootp[2]])))
    return found


def _message_type(options: bytes) -> int | None:
    i = 0
    while i < len(options):
        code = options[i]
        if code == 255:
            return None
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(options):
            return None
        length = options[i + 1]
        if code == 53 and length == 1 and i + 2 < len(options):
            return options[i + 2]
        i += 2 + length
    return None


def pcap_check(pcap: Path, base: str, count: int) -> int:
    """Every captured chaddr is a derived MAC, used in the derived order, all of them seen."""
    seen = discover_chaddrs(pcap)
    expected = perfdhcp_macs(base, count)
    if not seen:
        print(f"pcap-check: no DHCPDISCOVER in {pcap}", file=sys.stderr)
        return 1
    position = {mac: i for i, mac in enumerate(expected)}
    strangers = sorted({mac for mac in seen if mac not in position})
    # Order, tolerant of a packet the capture lost: the next client is the previous one + 1.
    steps = [
        (position[b] - position[a]) % count
        for a, b in itertools.pairwise(seen)
        if a in position and b in position
    ]
    in_order = sum(1 for step in steps if step == 1 or count == 1)
    distinct = set(seen)
    missing = len(set(expected) - distinct)
    ok = not strangers and in_order >= 0.99 * len(steps) and missing == 0
    print(
        f"pcap-check: {len(seen)} DISCOVERs, {len(distinct)} distinct chaddrs "
        f"(first {seen[0]}, highest {max(distinct)}); expected perfdhcp_macs({base}, {count}): "
        f"{len(strangers)} not in it, {missing} of it never seen, "
        f"{in_order}/{len(steps)} consecutive DISCOVERs go to the next client in its order"
        + ("" if ok else "  MISMATCH")
    )
    if strangers:
        print(f"pcap-check: unexpected chaddrs, e.g. {strangers[:5]}", file=sys.stderr)
    return 0 if ok else 1


# --- registering the clients in cloudctld ------------------------------------------------


def _api_client_class() -> type:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cloudctl.cli.client import ApiClient

    return ApiClient


def wait_health(socket: str, timeout: float) -> int:
    """Wait until cloudctld answers GET /v1/health on its Unix socket."""
    api_client = _api_client_class()
    deadline = time.monotonic() + timeout
    while True:
        try:
            api_client(socket, timeout=1).request("GET", "/v1/health")
            return 0
        except Exception as exc:
            if time.monotonic() > deadline:
                print(f"cloudctld did not answer /v1/health in {timeout:.0f} s: {exc}")
                return 1
            time.sleep(0.1)


def register(socket: str, base: str, count: int, threads: int) -> int:
    from concurrent.futures import ThreadPoolExecutor

    ApiClient = _api_client_class()

    macs = perfdhcp_macs(base, count)

    def worker(part: list[str]) -> int:
        client = ApiClient(socket)
        for mac in part:
            client.request("POST", "/v1/nodes", {"mac": mac, "role": "hnode"})
        client.close()
        return len(part)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(worker, [macs[k::threads] for k in range(threads)]))
    elapsed = time.perf_counter() - start
    nodes = ApiClient(socket).request("GET", "/v1/health")["nodes"]
    print(
        f"registered {done} MACs in {elapsed:.1f} s ({done / elapsed:.0f}/s), "
        f"cloudctld has {nodes} nodes"
    )
    return 0 if nodes >= count else 1


# --- one perfdhcp run: parse its report and decide ---------------------------------------

STEP_FIELDS = [
    "verdict",
    "rate",
    "sent",
    "acks",
    "leases_per_s",
    "drop_pct",
    "avg_ms",
    "p99_do_ms",
    "p99_ra_ms",
    "max_do_ms",
    "max_ra_ms",
]


def parse_report(text: str) -> dict:
    """perfdhcp's final report: per-stage counters, delays (ms) and -x t timestamps."""
    stages: dict[str, dict] = {}
    current: dict | None = None
    timestamps: list[float] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("***Statistics for:"):
            current = stages.setdefault(line.split(":")[1].strip(" *"), {})
            timestamps = None
        elif line.startswith("***Timestamps for packets:"):
            stage = stages.setdefault(line.split(":")[1].strip(" *"), {})
            timestamps = stage.setdefault("delays", [])
            current = None
        elif line.startswith("***"):
            current, timestamps = None, None
        elif timestamps is not None and line.startswith("sent / received:"):
            sent, received = line.split(":", 1)[1].split("/")
            timestamps.append((float(received) - float(sent)) * 1000.0)
        elif current is not None and ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            number = value.split()[0] if value else ""
            with contextlib.suppress(ValueError):
                current[key] = float(number)
    return stages


def _p99(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def judge_step(report: str, rate: int, period: float, max_drop_pct: float) -> dict:
    stages = parse_report(report)
    do = stages.get("DISCOVER-OFFER", {})
    ra = stages.get("REQUEST-ACK", {})
    sent = int(do.get("sent packets", 0))
    acks = int(ra.get("received packets", 0))
    offers = int(do.get("received packets", 0))
    # Drops over the whole DORA: a DISCOVER that did not end in an ACK, at either stage.
    drop_pct = 100.0 * (1 - acks / sent) if sent else 100.0
    if sent == 0:
        verdict = "client-error"
    elif offers == 0:
        verdict = "no-answers"
    elif sent < 0.97 * rate * period:
        # perfdhcp itself could not send at the rate asked: the client is the limit here.
        verdict = "client-limited"
    elif drop_pct > max_drop_pct:
        verdict = "drops"
    else:
        verdict = "pass"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    avg = None
    if "avg delay" in do and "avg delay" in ra:
        avg = do["avg delay"] + ra["avg delay"]
    return {
        "verdict": verdict,
        "rate": str(rate),
        "sent": str(sent),
        "acks": str(acks),
        # Leases per second of sending time; perfdhcp's own "Rate:" divides by the -W
        # wait too, so it reads low.
        "leases_per_s": f"{acks / period:.0f}",
        "drop_pct": f"{drop_pct:.3f}",
        "avg_ms": ms(avg),
        "p99_do_ms": ms(_p99(do.get("delays", []))),
        "p99_ra_ms": ms(_p99(ra.get("delays", []))),
        "max_do_ms": ms(do.get("max delay")),
        "max_ra_ms": ms(ra.get("max delay")),
    }


# --- the final table ---------------------------------------------------------------------

RESULT_FIELDS = "label status " + " ".join(STEP_FIELDS[1:])


def print_table(results: Path) -> int:
    rows = []
    for line in results.read_text().splitlines():
        if line.strip():
            rows.append(dict(zip(RESULT_FIELDS.split(), line.split("\t"), strict=False)))
    header = (
        "server",
        "max rate @<=0.1% drops",
        "leases/s",
        "avg DORA ms",
        "p99 ms D-O / R-A",
        "max ms D-O / R-A",
    )
    table = [header]
    for row in rows:
        if row["status"] != "ok":
            table.append((row["label"], row["status"], "", "", "", ""))
            continue
        table.append(
            (
                row["label"],
                f"{row['rate']}/s",
                row["leases_per_s"],
                row["avg_ms"],
                f"{row['p99_do_ms']} / {row['p99_ra_ms']}",
                f"{row['max_do_ms']} / {row['max_ra_ms']}",
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, r in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if n == 0:
            print("-+-".join("-" * w for w in widths))
    by_label = {row["label"]: row for row in rows}
    ours, kea = by_label.get("cloudctld"), by_label.get("kea")
    if ours and kea and ours["status"] == "ok" and kea["status"] == "ok":
        ratio = float(ours["leases_per_s"]) / float(kea["leases_per_s"])
        print(f"cloudctld / kea: {ratio:.2f}")
    else:
        why = [f"{r['label']}: {r['status']}" for r in (ours, kea) if r and r["status"] != "ok"]
        print(f"cloudctld / kea: n/a ({'; '.join(why) or 'missing rows'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selfcheck", help="test perfdhcp_macs() against known values")
    macs = sub.add_parser("macs", help="print the MACs of perfdhcp -b mac=BASE -R COUNT")
    macs.add_argument("base")
    macs.add_argument("count", type=int)
    check = sub.add_parser("pcap-check", help="compare captured DISCOVERs with perfdhcp_macs()")
    check.add_argument("pcap", type=Path)
    check.add_argument("base")
    check.add_argument("count", type=int)
    reg = sub.add_parser("register", help="register the MACs in cloudctld (run with the venv)")
    reg.add_argument("socket")
    reg.add_argument("base")
    reg.add_argument("count", type=int)
    reg.add_argument("--threads", type=int, default=16)
    health = sub.add_parser("wait-health", help="wait until cloudctld answers (run with the venv)")
    health.add_argument("socket")
    health.add_argument("--timeout", type=float, default=20.0)
    step = sub.add_parser("step", help="judge one perfdhcp report; prints a tab-separated line")
    step.add_argument("report", type=Path)
    step.add_argument("--rate", type=int, required=True)
    step.add_argument("--period", type=float, required=True)
    step.add_argument("--max-drop-pct", type=float, default=0.1)
    table = sub.add_parser("table", help="print the final table and the cloudctld / kea ratio")
    table.add_argument("results", type=Path)
    args = parser.parse_args(argv)

    if args.command == "selfcheck":
        selfcheck()
        print("perfdhcp_macs selfcheck: ok")
        return 0
    if args.command == "macs":
        print("\n".join(perfdhcp_macs(args.base, args.count)))
        return 0
    if args.command == "pcap-check":
        return pcap_check(args.pcap, args.base, args.count)
    if args.command == "wait-health":
        return wait_health(args.socket, args.timeout)
    if args.command == "register":
        return register(args.socket, args.base, args.count, args.threads)
    if args.command == "step":
        text = args.report.read_text(errors="replace")
        result = judge_step(text, args.rate, args.period, args.max_drop_pct)
        print("\t".join(result[name] for name in STEP_FIELDS))
        return 0
    return print_table(args.results)


if __name__ == "__main__":
    sys.exit(main())
