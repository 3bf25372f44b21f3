#!/usr/bin/env bash
# AoE benchmark: cloudctl's AoE target against vblade, seen from the Linux aoe driver in one
# qemu guest (TCG, direct kernel boot, initramfs with fio). Per MTU (1500, then 9000: bridge,
# veth, tap and the guest's eth0 set before `insmod aoe`, targets started after) the guest reads
# 256 MiB sequentially (dd bs=1M iflag=direct), writes 256 MiB (dd bs=1M oflag=direct) and runs
# 15 s of 4 KiB random reads (fio libaio, queue depth 16), against each server alone on the
# segment, serving the same file. Prints MB/s and IOPS for both and the ratio.
#
#   bash bench/aoe.sh            as root, from anywhere; about 10-15 minutes
#
# Environment (all optional): AOE_BENCH_ROUNDS (3: each round runs every server once, the order
# alternating; the table shows each cell's median), AOE_BENCH_MTUS ("1500,9000"),
# AOE_BENCH_SERVERS ("cloudctl,vblade"; add vblade-sync for `vblade -s`, whose WRITE answers
# wait for the disk as cloudctl's do; cloudctl@N for cloudctl advertising N buffers; and
# cloudctl-base for cloudctl run from AOE_BENCH_BASELINE, a directory holding another copy of the
# cloudctl package, for before/after in one run), AOE_BENCH_ROWS ("read,write,randread"),
# AOE_BENCH_MIB (256). `.venv/bin/python bench/aoe_bench.py backing` measures the durability
# options behind cloudctl/aoe/backing.py on this machine's disk (host only).
#
# Everything runs in network namespaces that the helper creates (tests/netlab.py) and removes on
# exit; qemu, the targets and vblade are started and stopped by PID inside them.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV_PY=${CLOUDCTL_PYTHON:-$ROOT/.venv/bin/python}

die() { printf 'aoe.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it creates network namespaces and taps)"
[ -x "$VENV_PY" ] || die "no $VENV_PY (run scripts/bootstrap.sh test once)"
missing=()
for tool in qemu-system-x86_64 vblade fio busybox ip ldd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    die "missing ${missing[*]}: apt-get install -y --no-install-recommends $(grep -v '^#' "$ROOT/scripts/bench-packages.txt" | tr '\n' ' ')"
fi

export AOE_BENCH_ROUNDS=${AOE_BENCH_ROUNDS:-3}
cd "$ROOT"
exec "$VENV_PY" "$HERE/aoe_bench.py" run
