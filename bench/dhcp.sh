#!/usr/bin/env bash
# DHCP benchmark: Kea's perfdhcp in one network namespace, a DHCP server in another, one veth
# between them; cloudctld (registered nodes, then discovery), Kea (memfile, persist) and dnsmasq
# (lease file, --no-ping) one after the other. For each: the highest DORA rate with <= 0.1%
# drops, the leases/s achieved there and the latency; then a table and cloudctld / kea.
#
#   bash bench/dhcp.sh                 as root, from anywhere; about 5-10 minutes
#
# Environment (all optional): DHCP_BENCH_CLIENTS (10000), DHCP_BENCH_PERIOD (10 s per step),
# DHCP_BENCH_SERVERS ("cloudctld cloudctld-discovery kea dnsmasq"), DHCP_BENCH_BUDGET (540 s
# of ramping in all), DHCP_BENCH_KEEP=1 keeps the work directory with configs and logs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RATE_PY=(python3 "$HERE/dhcp_rate.py")
VENV_PY=${CLOUDCTL_PYTHON:-$ROOT/.venv/bin/python}

CLIENTS=${DHCP_BENCH_CLIENTS:-10000}
PERIOD=${DHCP_BENCH_PERIOD:-10}
SERVERS=${DHCP_BENCH_SERVERS:-cloudctld cloudctld-discovery kea dnsmasq}
BUDGET=${DHCP_BENCH_BUDGET:-540}
MAX_DROP_PCT=0.1
BASE_MAC=00:0c:01:00:00:00
# Start at 500/s and go up; a server that drops already there is walked down instead.
UP_RATES=(500 1000 2000 3000 4000 5000 6000 8000 10000 12000 16000 20000)
DOWN_RATES=(200 100 50 20)
LATENCY_PERIOD=5

# One /16 for every server. Registered nodes get fixed addresses counted up from .0.3, so the
# relay (perfdhcp's own address, which is also the giaddr) sits at the far end, outside every
# pool and dynamic range.
SUBNET=10.77.0.0/16
GATEWAY=10.77.0.1
SERVER_IP=10.77.0.2
RELAY_IP=10.77.255.254
POOL_FIRST=10.77.1.0
POOL_LAST=10.77.254.255

# Names carry our PID so two runs (or a leftover) never collide; veth names <= 15 chars.
NS_SRV=dhcpb$$s
NS_CLI=dhcpb$$c
VETH_SRV=dhcpb$$s0
VETH_CLI=dhcpb$$c0

WORK=""
RESULTS=""
SERVER_PID=""
CAPTURE_PID=""
CLIENT_PID=""
MACS_VERIFIED=0
RAMP_START=0

say() { printf '%s\n' "$*"; }
die() { printf 'dhcp.sh: %s\n' "$*" >&2; exit 1; }

# --- setup and teardown ----------------------------------------------------------------

check_tools() {
    [ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces)"
    local missing=()
    local tool
    for tool in perfdhcp kea-dhcp4 dnsmasq tcpdump ip ss python3; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "missing ${missing[*]}: apt-get install -y --no-install-recommends $(tr '\n' ' ' <"$ROOT/scripts/bench-packages.txt")"
    fi
    # kea-dhcp4-server enables a system service on install; on a systemd host it would run
    # beside us. We only ever run kea-dhcp4 by hand in our namespace, so make sure it is off.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet kea-dhcp4-server 2>/dev/null; then
        say "stopping and disabling the kea-dhcp4-server system service (the bench runs its own)"
        systemctl disable --now kea-dhcp4-server >/dev/null 2>&1 || true
    fi
    "${RATE_PY[@]}" selfcheck >/dev/null
}

stop_pid() {
    # Ask nicely, then insist: every server here was started by us and is known by PID.
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    local _
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID"
    stop_pid "$CAPTURE_PID"
    stop_pid "$SERVER_PID"
    ip netns del "$NS_CLI" 2>/dev/null || true
    ip netns del "$NS_SRV" 2>/dev/null || true
    if [ -n "$WORK" ]; then
        if [ "$status" != 0 ] || [ "${DHCP_BENCH_KEEP:-0}" = 1 ]; then
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
    ip -n "$NS_CLI" addr add "$RELAY_IP/16" dev "$VETH_CLI"
    local ns
    for ns in "$NS_SRV" "$NS_CLI"; do
        ip -n "$ns" link set lo up
    done
    ip -n "$NS_SRV" link set "$VETH_SRV" up
    ip -n "$NS_CLI" link set "$VETH_CLI" up
}

wait_udp67() {
    # wait_udp67 [TENTHS]: the server (SERVER_PID) is ready once something listens on UDP 67
    # in its namespace; fails if it exits or TENTHS tenths of a second pass.
    local _
    for _ in $(seq "${1:-100}"); do
        [ -n "$(ip netns exec "$NS_SRV" ss -Hlun 'sport = :67')" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# --- perfdhcp ------------------------------------------------------------------------------

# perfdhcp as a relay (see LAB-FACTS): it sends unicast from RELAY_IP:67 with giaddr=RELAY_IP,
# hops=1, and wants the replies back on RELAY_IP:67. -R/-b give the client MACs (see
# perfdhcp_macs in dhcp_rate.py); -g multi receives in a second thread (single-thread mode
# dropped at half the rate here); -W 1000000 waits 1 s after the last DISCOVER so exchanges in
# flight at the end are not counted as drops (without it the tail always "drops").
perfdhcp_cmd() {
    local rate=$1
    shift
    PERFDHCP=(ip netns exec "$NS_CLI" perfdhcp -4 -g multi -l "$VETH_CLI" -r "$rate"
        -R "$CLIENTS" -b "mac=$BASE_MAC" -W 1000000 "$@" "$SERVER_IP")
}

run_perfdhcp() {
    # run_perfdhcp OUT RATE ARGS...: perfdhcp exits 3 when any exchange failed; that is data.
    local out=$1 rate=$2
    shift 2
    perfdhcp_cmd "$rate" "$@"
    printf '%s\n' "${PERFDHCP[*]}" >"$out.cmd"
    # In the background and waited for, so an interrupt runs the cleanup trap at once
    # instead of after the step.
    "${PERFDHCP[@]}" >"$out" 2>&1 &
    CLIENT_PID=$!
    local rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
        say "    perfdhcp failed (exit $rc): $(tail -n 1 "$out")"
    fi
}

verify_macs() {
    # Capture the DISCOVERs of a real perfdhcp run (no server needed: it sends at the rate
    # regardless) and check that its chaddrs are exactly perfdhcp_macs(BASE, CLIENTS), in order.
    local pcap=$WORK/macs.pcap
    say "checking which MACs perfdhcp -R $CLIENTS -b mac=$BASE_MAC uses (tcpdump on $VETH_CLI)"
    ip netns exec "$NS_CLI" tcpdump -Z root -n -i "$VETH_CLI" -s 400 -w "$pcap" \
        'udp and dst port 67' 2>"$WORK/tcpdump.log" &
    CAPTURE_PID=$!
    local _
    for _ in $(seq 50); do
        grep -q listening "$WORK/tcpdump.log" && break
        sleep 0.1
    done
    run_perfdhcp "$WORK/macs.out" 5000 -n $((CLIENTS + 200))
    sleep 0.3
    stop_pid "$CAPTURE_PID"
    CAPTURE_PID=""
    if "${RATE_PY[@]}" pcap-check "$pcap" "$BASE_MAC" "$CLIENTS" | sed 's/^/  /'; then
        MACS_VERIFIED=1
    else
        say "  the MAC derivation does not match this perfdhcp: cloudctld's registered row is skipped"
    fi
    rm -f "$pcap"
}

cpu_ticks() {
    # utime + stime of a process, all threads, in clock ticks (fields 14 and 15 of stat;
    # the command name before them is in parentheses and may contain spaces).
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

queued_bytes() {
    # Bytes waiting in the server's UDP 67 socket(s): requests it has not even read yet.
    ip netns exec "$NS_SRV" ss -Hlun 'sport = :67' | awk '{ q += $2 } END { print q + 0 }'
}

wait_idle() {
    # Let the server finish the backlog of the previous step (an overloaded step leaves its
    # socket buffer full and, for dnsmasq, seconds of queued lease file rewrites) so every
    # step starts from an idle server: nothing queued on UDP 67 and < 5% of a core used over
    # 0.5 s (CPU alone is not enough: dnsmasq waiting in fsync uses none). At most 15 s.
    [ -n "$SERVER_PID" ] || return 0
    local before after _
    for _ in $(seq 30); do
        before=$(cpu_ticks "$SERVER_PID")
        sleep 0.5
        after=$(cpu_ticks "$SERVER_PID")
        [ $((after - before)) -le 2 ] && [ "$(queued_bytes)" = 0 ] && return 0
    done
    say "    (server still busy after 15 s; measuring anyway)"
}

run_step() {
    # run_step LABEL RATE: one bounded perfdhcp run; sets STEP (tab-separated, see STEP_FIELDS
    # in dhcp_rate.py) and VERDICT.
    local label=$1 rate=$2
    local out=$WORK/$label-$rate.out
    wait_idle
    run_perfdhcp "$out" "$rate" -p "$PERIOD"
    STEP=$("${RATE_PY[@]}" step "$out" --rate "$rate" --period "$PERIOD" --max-drop-pct "$MAX_DROP_PCT")
    local verdict _r sent acks lps drop avg _p1 _p2 maxdo maxra
    IFS=$'\t' read -r verdict _r sent acks lps drop avg _p1 _p2 maxdo maxra <<<"$STEP"
    VERDICT=$verdict
    printf '  %-20s %6s/s: %-14s sent %7s  acks %7s  %6s leases/s  drops %7s%%  avg %s ms  max %s/%s ms\n' \
        "$label" "$rate" "$verdict" "$sent" "$acks" "$lps" "$drop" "$avg" "$maxdo" "$maxra"
}

over_budget() {
    [ $((SECONDS - RAMP_START)) -ge "$BUDGET" ]
}

latency_run() {
    # latency_run LABEL RATE: a short perfdhcp -x t run (it prints every exchange's send and
    # receive times) for the p99 of each stage; sets LATENCY to "P99_DO<TAB>P99_RA", each
    # flagged with '!' when this run itself dropped more than the threshold.
    local label=$1 rate=$2
    local out=$WORK/$label-$rate-latency.out lat verdict
    wait_idle
    run_perfdhcp "$out" "$rate" -p "$LATENCY_PERIOD" -x t
    lat=$("${RATE_PY[@]}" step "$out" --rate "$rate" --period "$LATENCY_PERIOD" --max-drop-pct "$MAX_DROP_PCT")
    verdict=$(cut -f1 <<<"$lat")
    local flag=""
    [ "$verdict" = pass ] || flag="!"
    LATENCY="$(cut -f8 <<<"$lat")$flag"$'\t'"$(cut -f9 <<<"$lat")$flag"
    printf '  %-20s %6s/s: %-14s p99 DISCOVER-OFFER %s ms, REQUEST-ACK %s ms (%s s with -x t, drops %s%%)\n' \
        "$label" "$rate" "latency" "$(cut -f8 <<<"$lat")" "$(cut -f9 <<<"$lat")" "$LATENCY_PERIOD" "$(cut -f6 <<<"$lat")"
}

ramp() {
    # ramp LABEL: up through UP_RATES while drops stay <= 0.1% (a failing step gets one retry:
    # the machine is shared and noisy); if the first step already fails, down through
    # DOWN_RATES. Appends the best passing step to RESULTS.
    #
    # perfdhcp -x t keeps every exchange in memory (~16 KB each) to list its timestamps, so
    # the rate steps run without it and each passing step is followed at once by a short
    # -x t run at the same rate for the p99. At once, not after the ramp: an overloaded
    # step can leave a server slow for a while after it (see bench/README.md).
    local label=$1
    local best="" best_latency="" status="" rate
    say "  steps: $(perfdhcp_cmd RATE -p "$PERIOD"; printf '%s' "${PERFDHCP[*]}")"
    for rate in "${UP_RATES[@]}"; do
        if over_budget; then status="stopped: time budget"; break; fi
        run_step "$label" "$rate"
        if [ "$VERDICT" = drops ] && [ -n "$best" ]; then
            run_step "$label" "$rate"
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            say "  $label exited during the ramp (see its log in the work directory)"
            break
        fi
        case $VERDICT in
            pass) best=$STEP; latency_run "$label" "$rate"; best_latency=$LATENCY ;;
            no-answers) status="no answers"; break ;;
            *) break ;;
        esac
    done
    if [ -z "$best" ] && [ -z "$status" ]; then
        for rate in "${DOWN_RATES[@]}"; do
            over_budget && break
            run_step "$label" "$rate"
            if [ "$VERDICT" = pass ]; then
                best=$STEP
                latency_run "$label" "$rate"
                best_latency=$LATENCY
                break
            fi
            [ "$VERDICT" = no-answers ] && { status="no answers"; break; }
        done
    fi
    if [ -z "$best" ]; then
        [ -n "$status" ] || status="drops > ${MAX_DROP_PCT}% at every rate"
        [ "$status" = "no answers" ] && say "$label: no answers"
        printf '%s\t%s\n' "$label" "$status" >>"$RESULTS"
        return 0
    fi
    # The ramp step's figures, with the p99 columns from its latency run.
    best=$(awk -F'\t' -v OFS='\t' -v lat="$best_latency" \
        '{ split(lat, p, "\t"); $8 = p[1]; $9 = p[2]; print }' <<<"$best")
    printf '%s\tok\t%s\n' "$label" "$(cut -f2- <<<"$best")" >>"$RESULTS"
}

probe() {
    # A few exchanges first: a server that answers nothing gets "no answers" in seconds,
    # not a whole ramp of timeouts.
    local label=$1
    local out=$WORK/$label-probe.out
    run_perfdhcp "$out" 50 -n 50
    local verdict
    verdict=$("${RATE_PY[@]}" step "$out" --rate 50 --period 1 | cut -f1)
    if [ "$verdict" = no-answers ] || [ "$verdict" = client-error ]; then
        say "$label: no answers"
        printf '%s\tno answers\n' "$label" >>"$RESULTS"
        return 1
    fi
}

# --- the servers ---------------------------------------------------------------------------

write_cloudctld_config() {
    # write_cloudctld_config DIR DISCOVERY FIRST LAST
    local dir=$1 discovery=$2 first=$3 last=$4
    mkdir -p "$dir/tftp" "$dir/volumes"
    cat >"$dir/cloudctl.yaml" <<EOF
# Generated by bench/dhcp.sh.
log_level: warning
state:
  path: $dir/state.db
api:
  socket: $dir/api.sock
network:
  interface: $VETH_SRV
  subnet: $SUBNET
  gateway: $GATEWAY
  server: $SERVER_IP
  dynamic_range: [$first, $last]
  domain: bench.test
dhcp:
  enabled: true
  lease_time: 3600
  discovery: $discovery
  discovery_lease_time: 3600
dns:
  enabled: false
boot:
  tftp_root: $dir/tftp
storage:
  volume_dir: $dir/volumes
EOF
}

start_cloudctld() {
    # start_cloudctld DIR: in the server namespace, by PID; waits for its API.
    local dir=$1
    [ -x "$VENV_PY" ] || { say "  no $VENV_PY (run scripts/bootstrap.sh test once)"; return 1; }
    ip netns exec "$NS_SRV" "$(dirname "$VENV_PY")/cloudctld" --config "$dir/cloudctl.yaml" \
        >"$dir/cloudctld.log" 2>&1 &
    SERVER_PID=$!
    if ! "$VENV_PY" "$HERE/dhcp_rate.py" wait-health "$dir/api.sock" --timeout 20 >/dev/null; then
        say "  cloudctld did not start: $(tail -n 1 "$dir/cloudctld.log")"
        return 1
    fi
    # Its DHCP listener may come up after the API; give it a moment, but do not insist:
    # until cloudctld has a DHCP server the probe reports "no answers".
    wait_udp67 30 || true
}

bench_cloudctld() {
    # Registered path: exactly the MACs perfdhcp will use are nodes before the first DISCOVER.
    local label=cloudctld dir=$WORK/cloudctld
    say "== $label: registered nodes (fixed addresses), $CLIENTS MACs registered through the API"
    if [ "$MACS_VERIFIED" != 1 ]; then
        printf '%s\tskipped: MAC derivation unverified\n' "$label" >>"$RESULTS"
        return 0
    fi
    write_cloudctld_config "$dir" false 10.77.255.0 10.77.255.200
    if ! start_cloudctld "$dir"; then
        printf '%s\tfailed to start\n' "$label" >>"$RESULTS"
        stop_pid "$SERVER_PID"; SERVER_PID=""
        return 0
    fi
    if ! "$VENV_PY" "$HERE/dhcp_rate.py" register "$dir/api.sock" "$BASE_MAC" "$CLIENTS" | sed 's/^/  /'; then
        printf '%s\tregistration failed\n' "$label" >>"$RESULTS"
    elif probe "$label"; then
        ramp "$label"
    fi
    stop_pid "$SERVER_PID"; SERVER_PID=""
}

bench_cloudctld_discovery() {
    # Discovery path: nothing registered, every client unknown, leases from a dynamic range
    # large enough for all of them.
    local label=cloudctld-discovery dir=$WORK/cloudctld-discovery
    say "== $label: unknown MACs, dhcp.discovery: true, no registration"
    write_cloudctld_config "$dir" true "$POOL_FIRST" "$POOL_LAST"
    if ! start_cloudctld "$dir"; then
        printf '%s\tfailed to start\n' "$label" >>"$RESULTS"
        stop_pid "$SERVER_PID"; SERVER_PID=""
        return 0
    fi
    probe "$label" && ramp "$label"
    stop_pid "$SERVER_PID"; SERVER_PID=""
}

bench_kea() {
    local label=kea dir=$WORK/kea
    say "== $label: kea-dhcp4 $(kea-dhcp4 -v), memfile persist: true"
    mkdir -p "$dir"
    # UDP sockets: every request is relayed (unicast to us), which is what they are for.
    # lfc-interval 0: no kea-lfc children we would not be tracking; the bench is too short
    # for the lease file compaction to matter. Logging at WARN, like the other servers.
    cat >"$dir/kea-dhcp4.json" <<EOF
{"Dhcp4": {
  "interfaces-config": {"interfaces": ["$VETH_SRV"], "dhcp-socket-type": "udp"},
  "lease-database": {"type": "memfile", "persist": true, "lfc-interval": 0,
                     "name": "$dir/leases4.csv"},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "$SUBNET",
               "pools": [{"pool": "$POOL_FIRST - $POOL_LAST"}],
               "option-data": [{"name": "routers", "data": "$GATEWAY"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
               "output_options": [{"output": "$dir/kea-dhcp4.log"}]}]
}}
EOF
    # Pid and lock files in our directory, not /run/kea (a system instance may own those).
    ip netns exec "$NS_SRV" env KEA_PIDFILE_DIR="$dir" KEA_LOCKFILE_DIR="$dir" \
        kea-dhcp4 -c "$dir/kea-dhcp4.json" >"$dir/stdout.log" 2>&1 &
    SERVER_PID=$!
    if ! wait_udp67; then
        say "  kea-dhcp4 did not start: $(tail -n 1 "$dir/stdout.log")"
        printf '%s\tfailed to start\n' "$label" >>"$RESULTS"
    elif probe "$label"; then
        ramp "$label"
    fi
    stop_pid "$SERVER_PID"; SERVER_PID=""
}

bench_dnsmasq() {
    local label=dnsmasq dir=$WORK/dnsmasq
    say "== $label: $(dnsmasq -v | head -n 1 | cut -d' ' -f1-3), lease file, --no-ping"
    mkdir -p "$dir"
    # Only DHCP (--port=0), no config files of the host, foreground so our PID is its PID.
    # --dhcp-lease-max: the default of 1000 would refuse most of our clients.
    # --quiet-dhcp: no log line per packet, like Kea at WARN. Root stays root because the
    # work directory is 0700 and dnsmasq rewrites its lease file as it goes.
    ip netns exec "$NS_SRV" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 \
        --user=root --group=root --interface="$VETH_SRV" --bind-interfaces \
        --dhcp-range="$POOL_FIRST,$POOL_LAST,255.255.0.0,1h" --dhcp-option=3,"$GATEWAY" \
        --dhcp-leasefile="$dir/dnsmasq.leases" --dhcp-lease-max=65536 --no-ping --quiet-dhcp \
        --pid-file="$dir/dnsmasq.pid" --log-facility="$dir/dnsmasq.log" \
        >"$dir/stdout.log" 2>&1 &
    SERVER_PID=$!
    if ! wait_udp67; then
        say "  dnsmasq did not start: $(tail -n 1 "$dir/stdout.log" "$dir/dnsmasq.log" 2>/dev/null)"
        printf '%s\tfailed to start\n' "$label" >>"$RESULTS"
    elif probe "$label"; then
        ramp "$label"
        say "  dnsmasq holds $(wc -l <"$dir/dnsmasq.leases") leases at the end"
    fi
    stop_pid "$SERVER_PID"; SERVER_PID=""
}

main() {
    check_tools
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK=$(mktemp -d /tmp/dhcpbench.XXXXXX)
    RESULTS=$WORK/results.tsv
    : >"$RESULTS"
    setup_network
    say "namespaces $NS_CLI ($RELAY_IP, perfdhcp) <-> $NS_SRV ($SERVER_IP, server); $CLIENTS clients, $PERIOD s per step, drops <= $MAX_DROP_PCT%"
    verify_macs
    RAMP_START=$SECONDS
    local server
    for server in $SERVERS; do
        case $server in
            cloudctld) bench_cloudctld ;;
            cloudctld-discovery) bench_cloudctld_discovery ;;
            kea) bench_kea ;;
            dnsmasq) bench_dnsmasq ;;
            *) die "unknown server $server (cloudctld, cloudctld-discovery, kea, dnsmasq)" ;;
        esac
    done
    say ""
    say "DHCP DORA via perfdhcp relay, $CLIENTS clients, $PERIOD s steps; avg = mean DISCOVER-OFFER + mean REQUEST-ACK;"
    say "p99 per stage from a ${LATENCY_PERIOD} s perfdhcp -x t run right after that step, same rate (perfdhcp has no DORA"
    say "percentile); '!' = that run itself dropped more than ${MAX_DROP_PCT}%"
    "${RATE_PY[@]}" table "$RESULTS"
    say "total $SECONDS s"
}

main "$@"
