#!/usr/bin/env bash
# Live migration bench (bench/migration.py): cloudctl instance migrate vs virsh migrate --live,
# the same lab guest between the same two libvirtd, interleaved in one run.
#   bash bench/migration.sh [--rounds 10]     as root, after scripts/bootstrap.sh test; ~1-2 min
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
exec "${CLOUDCTL_PYTHON:-$root/.venv/bin/python}" bench/migration.py "$@"
