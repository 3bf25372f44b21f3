#!/usr/bin/env bash
# TFTP benchmark: clients in one network namespace, a TFTP server in another, one veth between
# them; cloudctl's TftpServer, in.tftpd (tftpd-hpa) and dnsmasq's TFTP one after the other on
# the same address and port 69, serving the same files from the same directory. Rows: one
# 64 MiB fetch with curl at blksize 1468, one with atftp at blksize 1468 + windowsize 16, and a
# storm of 50 parallel curls fetching a 4 MiB file. Prints MB/s and the ratio to in.tftpd.
#
#   bash bench/tftp.sh                 as root, from anywhere; about 1-3 minutes
#
# Environment (all optional): TFTP_BENCH_ROUNDS (5: each round runs every server once, in
# turn; the table shows each cell's median), TFTP_BENCH_SERVERS ("cloudctl cloudctl-w0 in.tftpd
# dnsmasq"; cloudctl-wN is cloudctl with N transfer workers, cloudctl-w0 with none, as cloudctld
# runs by default),
# TFTP_BENCH_CLIENTS (50), TFTP_BENCH_KEEP=1 keeps the work directory with the server logs,
# TFTP_BENCH_WORKERS (cloudctl's transfer worker processes; default: one per CPU, 0: none).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV_PY=${CLOUDCTL_PYTHON:-$ROOT/.venv/bin/python}
HELPER=("$VENV_PY" "$HERE/tftp_storm.py")

ROUNDS=${TFTP_BENCH_ROUNDS:-5}
SERVERS=${TFTP_BENCH_SERVERS:-cloudctl cloudctl-w0 in.tftpd dnsmasq}
CLIENTS=${TFTP_BENCH_CLIENTS:-50}
WORKERS=${TFTP_BENCH_WORKERS:-$(nproc)}
BIG_MIB=64
STORM_MIB=4
BLKSIZE=1468
WINDOWSIZE=16

SERVER_IP=10.78.0.2
CLIENT_IP=10.78.0.9
# Each storm client fetches from its own address, as each node of a booting rack would.
STORM_PREFIX=10.78.1.

# Names carry our PID so two runs (or a leftover) never collide; veth names <= 15 chars.
NS_SRV=tftpb$$s
NS_CLI=tftpb$$c
VETH_SRV=tftpb$$s0
VETH_CLI=tftpb$$c0

HZ=$(getconf CLK_TCK)
WORK=""
SERVER_PID=""
CLIENT_PID=""
FETCHED=""

say() { printf '%s\n' "$*"; }
die() { printf 'tftp.sh: %s\n' "$*" >&2; exit 1; }

# --- setup and teardown ----------------------------------------------------------------

check_tools() {
    [ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces)"
    local missing=() tool
    for tool in curl atftp in.tftpd dnsmasq ip ss; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "missing ${missing[*]}: apt-get install -y --no-install-recommends $(tr '\n' ' ' <"$ROOT/scripts/bench-packages.txt")"
    fi
    [ -x "$VENV_PY" ] || die "no $VENV_PY (run scripts/bootstrap.sh test once)"
    # tftpd-hpa's package starts a system in.tftpd on install; it listens in the host
    # namespace only, so it does not disturb ours, but say so rather than leave it unnoticed.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet tftpd-hpa 2>/dev/null; then
        say "note: the tftpd-hpa system service runs in the host namespace (not used here)"
    fi
}

stop_pid() {
    # Ask nicely, then insist: every process here was started by us and is known by PID.
    # Servers lead their own process group (setsid), so the signal also reaches the children
    # they fork (in.tftpd's transfers); the fetch helper stops its clients itself.
    local pid=$1 target=$1 _
    [ -n "$pid" ] || return 0
    [ "$pid" = "$SERVER_PID" ] && target=-$pid
    kill -TERM -- "$target" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "$target" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID"
    stop_pid "$SERVER_PID"
    ip netns del "$NS_CLI" 2>/dev/null || true
    ip netns del "$NS_SRV" 2>/dev/null || true
    if [ -n "$WORK" ]; then
        if [ "$status" != 0 ] || [ "${TFTP_BENCH_KEEP:-0}" = 1 ]; then
            rm -rf "$WORK/tftp" "$WORK/out"  # 68 MiB of tmpfs; the logs are what is kept
            say "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}

setup_network() {
    ip netns add "$NS_SRV"
    ip netns add "$NS_CLI"
    ip link add "$VETH_CLI" type veth peer name "$VETH_SRV"
    ip link set "$VETH_SRV" netns "$NS_SRV"
    ip link set "$VETH_CLI" netns "$NS_CLI"
    ip -n "$NS_SRV" addr add "$SERVER_IP/16" dev "$VETH_SRV"
    ip -n "$NS_CLI" addr add "$CLIENT_IP/16" dev "$VETH_CLI"
    local i
    for i in $(seq "$CLIENTS"); do
        ip -n "$NS_CLI" addr add "$STORM_PREFIX$i/16" dev "$VETH_CLI"
    done
    ip -n "$NS_SRV" link set lo up
    ip -n "$NS_CLI" link set lo up
    ip -n "$NS_SRV" link set "$VETH_SRV" up
    ip -n "$NS_CLI" link set "$VETH_CLI" up
}

make_files() {
    # Served by every server from this one directory; readable by in.tftpd's "nobody".
    mkdir -p "$WORK/tftp" "$WORK/out"
    chmod 755 "$WORK" "$WORK/tftp"
    head -c $((BIG_MIB << 20)) /dev/urandom >"$WORK/tftp/big.bin"
    head -c $((STORM_MIB << 20)) /dev/urandom >"$WORK/tftp/storm.bin"
    chmod 644 "$WORK/tftp/big.bin" "$WORK/tftp/storm.bin"
}

wait_udp69() {
    # The server (SERVER_PID) is ready once something listens on UDP 69 in its namespace.
    local _
    for _ in $(seq 100); do
        [ -n "$(ip netns exec "$NS_SRV" ss -Hlun 'sport = :69')" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# --- the servers ---------------------------------------------------------------------------

start_server() {
    # start_server NAME LOG: in the server namespace, in the foreground, by PID; setsid makes
    # it a process group leader without forking (a background job here is not one), so the
    # PID stays the server's.
    local name=$1 log=$2
    case $name in
        cloudctl | cloudctl-w[0-9]*)
            # Standalone TftpServer (the transport cloudctld runs), caps at cloudctld's defaults;
            # cloudctl-wN runs it with N transfer workers (0: transfers on the event loop).
            local workers=$WORKERS
            [ "$name" = cloudctl ] || workers=${name#cloudctl-w}
            setsid ip netns exec "$NS_SRV" "${HELPER[@]}" serve --root "$WORK/tftp" \
                --interface "$VETH_SRV" --workers "$workers" >"$log" 2>&1 &
            ;;
        in.tftpd)
            # -L: listen in the foreground; -s: chroot to the directory (files named relative).
            setsid ip netns exec "$NS_SRV" in.tftpd -L -s "$WORK/tftp" -a "$SERVER_IP:69" >"$log" 2>&1 &
            ;;
        dnsmasq)
            # TFTP only: --port=0 turns DNS off, no --dhcp-range means no DHCP. --tftp-max
            # above the storm (its default is 50); blocksize negotiation stays on.
            setsid ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 \
                --user=root --group=root --interface="$VETH_SRV" --bind-interfaces \
                --enable-tftp --tftp-root="$WORK/tftp" --tftp-max=200 \
                --pid-file="$WORK/dnsmasq.pid" --log-facility="$log" >>"$log" 2>&1 &
            ;;
        *) die "unknown server $name (cloudctl, cloudctl-wN, in.tftpd, dnsmasq)" ;;
    esac
    SERVER_PID=$!
    wait_udp69
}

# --- the rows ------------------------------------------------------------------------------

fetch() {
    # fetch ARGS...: the helper in the client namespace; sets FETCHED to its "BYTES SECONDS
    # FAILED CPU". Run in the background of this shell (not in a $(...) subshell) and waited
    # for, so an interrupt runs the cleanup trap at once and the trap knows CLIENT_PID.
    ip netns exec "$NS_CLI" "${HELPER[@]}" fetch --server "$SERVER_IP" --out-dir "$WORK/out" "$@" \
        >"$WORK/fetch.out" &
    CLIENT_PID=$!
    local rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    FETCHED="0 1 1 0"  # a failed row unless the helper reported; the run goes on
    if [ "$rc" = 0 ] && [ -s "$WORK/fetch.out" ]; then
        FETCHED=$(cat "$WORK/fetch.out")
    fi
}

cpu_ticks() {
    # "USER SYSTEM" clock ticks used by a server and the processes of its process group
    # (fields 14 and 15 of stat, after the parenthesised name; the group is field 5), plus
    # the children it has reaped (16 and 17): cloudctl's transfer workers live in its group.
    # in.tftpd's work happens in children that have exited unreaped by the time we look, so
    # its figure stays 0 and is shown as n/a.
    local stat user=0 sys=0 f
    for f in /proc/[0-9]*/stat; do
        stat=$(cat "$f" 2>/dev/null) || continue
        stat=${stat##*) }
        read -r -a fields <<<"$stat"
        if [ "${f#/proc/}" = "$1/stat" ]; then
            user=$((user + fields[11] + fields[13])); sys=$((sys + fields[12] + fields[14]))
        elif [ "${fields[2]}" = "$1" ]; then
            user=$((user + fields[11])); sys=$((sys + fields[12]))
        fi
    done
    echo "$user $sys"
}

run_row() {
    # run_row SERVER ROW FETCH-ARGS...: one row; appends MB/s (10^6 bytes/s) to the results,
    # with the CPU the server and the clients spent per DATA block (at blksize 1468).
    local server=$1 row=$2 bytes seconds failed client_cpu user0 sys0 user1 sys1
    shift 2
    read -r user0 sys0 <<<"$(cpu_ticks "$SERVER_PID")"
    fetch "$@"
    read -r bytes seconds failed client_cpu <<<"$FETCHED"
    read -r user1 sys1 <<<"$(cpu_ticks "$SERVER_PID")"
    local mbs per_block
    mbs=$(awk -v b="$bytes" -v s="$seconds" 'BEGIN { printf "%.1f", b / s / 1e6 }')
    per_block=$(awk -v b="$bytes" -v u=$((user1 - user0)) -v s=$((sys1 - sys0)) \
        -v c="$client_cpu" -v hz="$HZ" -v name="$server" \
        'BEGIN { n = b / 1468; if (n < 1) n = 1; us = 1e6 / hz / n;
                 srv = sprintf("%.1f us (kernel %.1f)", (u + s) * us, s * us);
                 if (name == "in.tftpd") srv = "n/a";
                 printf "server %s, clients %.1f us", srv, c / n * 1e6 }')
    printf '%s\t%s\t%s\t%s\n' "$server" "$row" "$mbs" "$failed" >>"$WORK/results.tsv"
    printf '  %-9s %-9s %7s MB/s  %s s  CPU per block: %s%s\n' "$server" "$row" "$mbs" \
        "$seconds" "$per_block" "$([ "$failed" = 0 ] || printf ', %s FAILED' "$failed")"
}

bench_server() {
    local name=$1 log=$WORK/$1-round$2.log
    if ! start_server "$name" "$log"; then
        say "  $name did not start: $(tail -n 2 "$log")"
        stop_pid "$SERVER_PID"; SERVER_PID=""
        return 0
    fi
    run_row "$name" curl --tool curl --file big.bin --source "$WORK/tftp/big.bin" \
        --blksize "$BLKSIZE"
    run_row "$name" atftp-w16 --tool atftp --file big.bin --source "$WORK/tftp/big.bin" \
        --blksize "$BLKSIZE" --windowsize "$WINDOWSIZE"
    run_row "$name" storm --tool curl --file storm.bin --source "$WORK/tftp/storm.bin" \
        --blksize "$BLKSIZE" --clients "$CLIENTS" --bind-prefix "$STORM_PREFIX"
    stop_pid "$SERVER_PID"; SERVER_PID=""
    if [ "${name%%-w*}" = cloudctl ]; then
        # What the server saw (retransmissions mean loss or a slow client), from its exit line.
        say "  cloudctl counters: $(grep -o "counters: .*" "$log" | tail -n 1 | cut -c 11-)"
    fi
}

table() {
    # Median MB/s per server and row over the rounds, and the ratio to in.tftpd's median.
    "$VENV_PY" - "$WORK/results.tsv" "$SERVERS" <<'PY'
import statistics, sys
rows = {"curl": f"64 MiB, curl blksize 1468", "atftp-w16": "64 MiB, atftp 1468 + windowsize 16",
        "storm": "storm: parallel curls x 4 MiB, 1468"}
cells, failed = {}, {}
for line in open(sys.argv[1]):
    server, row, mbs, bad = line.split("\t")
    cells.setdefault((server, row), []).append(float(mbs))
    failed[(server, row)] = failed.get((server, row), 0) + int(bad)
servers = sys.argv[2].split()
print(f"{'row':38}" + "".join(f"{s:>18}" for s in servers))
for row, title in rows.items():
    base = statistics.median(cells.get(("in.tftpd", row), [0])) or None
    line = f"{title:38}"
    for s in servers:
        got = cells.get((s, row))
        if not got:
            line += f"{'-':>18}"
            continue
        mbs = statistics.median(got)
        ratio = f" ({mbs / base:.2f}x)" if base else ""
        flag = "!" if failed.get((s, row)) else ""
        line += f"{f'{mbs:.1f}{flag}{ratio}':>18}"
    print(line)
if "cloudctl" in servers and "in.tftpd" in servers:
    bars = {"curl": 1.0, "atftp-w16": 2.0, "storm": 1.5}
    verdicts = []
    for row, bar in bars.items():
        ours, base = cells.get(("cloudctl", row)), cells.get(("in.tftpd", row))
        if ours and base:
            ratio = statistics.median(ours) / statistics.median(base)
            ok = "met" if ratio >= bar and not failed.get(("cloudctl", row)) else "MISSED"
            verdicts.append(f"{row} {ratio:.3f}x (bar {bar:g}x: {ok})")
    print("cloudctl / in.tftpd: " + "; ".join(verdicts))
PY
}

main() {
    check_tools
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d /dev/shm/tftpbench.XXXXXX)
    : >"$WORK/results.tsv"
    setup_network
    make_files
    say "namespaces $NS_CLI ($CLIENT_IP, clients) <-> $NS_SRV ($SERVER_IP, server), MTU 1500;"
    say "$ROUNDS rounds of: $SERVERS (cloudctl with $WORKERS transfer workers)"
    local round server
    for round in $(seq "$ROUNDS"); do
        say "== round $round"
        for server in $SERVERS; do
            bench_server "$server" "$round"
        done
    done
    say ""
    say "TFTP MB/s (10^6 bytes/s), median of $ROUNDS rounds, (ratio to in.tftpd);"
    say "'!' = a client failed or got different bytes in some round (its bytes are not counted)"
    table
    say "total $SECONDS s"
}

main "$@"
