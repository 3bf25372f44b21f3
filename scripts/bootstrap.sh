#!/usr/bin/env bash
# Set up everything cloudctl needs on a fresh Debian 12 machine (as root), then run one job:
#   bash scripts/bootstrap.sh demo        start cloudctld with etc/cloudctl.yaml and register a demo node
#   bash scripts/bootstrap.sh test [ARGS] lint and run the whole test suite (ARGS go to pytest,
#                                          e.g. -m "not slow" to skip the slow end-to-end tests)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# Debian packages: the Python toolchain, libvirt's headers (libvirt-python builds against
# them) and the boot programs cloudctld serves (pxelinux, syslinux-common, ipxe) for every
# job; the tests add the real peers they talk to (scripts/test-packages.txt: qemu, udhcpc,
# dhclient, perfdhcp, dig, libvirtd, ...).
APT_PACKAGES=(
    python3 python3-venv python3-dev gcc pkg-config libvirt-dev
    iproute2 curl procps
    pxelinux syslinux-common ipxe
)

package_list() {
    grep -v '^[[:space:]]*\(#\|$\)' "$1"
}

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: run as root (it installs Debian packages and creates network namespaces)" >&2
        exit 1
    fi
}

install_system_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "bootstrap: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_python() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    mkdir -p var
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e '.[test]'; } >var/pip.log 2>&1; then
        cat var/pip.log >&2
        echo "bootstrap: installing the Python dependencies failed (log above)" >&2
        exit 1
    fi
}

run_demo() {
    # cloudctld serves DHCP/DNS on network.interface (cloud0 in etc/cloudctl.yaml). The demo
    # gives it a namespace of its own with a veth named cloud0, so the host's network is untouched.
    local ns=cloudctl-demo sock
    sock=$(.venv/bin/python -c 'from cloudctl.config import load_config; print(load_config("etc/cloudctl.yaml").api.socket)')
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add cloud0 type veth peer name cloud0-peer
    ip -n "$ns" link set cloud0-peer up
    ip -n "$ns" addr add 10.20.0.2/24 dev cloud0
    ip -n "$ns" link set cloud0 up
    ip netns exec "$ns" .venv/bin/cloudctld --config etc/cloudctl.yaml &
    local pid=$!
    trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; ip netns del '"$ns"' 2>/dev/null' EXIT
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    local cli=(.venv/bin/cloudctl --config etc/cloudctl.yaml)
    "${cli[@]}" node show demo-hn1 >/dev/null 2>&1 ||
        "${cli[@]}" node add --mac 52:54:00:c1:0d:01 --role hnode --name demo-hn1 --reason "bootstrap demo"
    "${cli[@]}" node list
    echo
    echo "cloudctld is running (pid $pid, network namespace $ns); in another shell try:"
    echo "  .venv/bin/cloudctl --config etc/cloudctl.yaml node list"
    echo "Press Ctrl-C to stop it."
    wait $pid
}

run_tests() {
    .venv/bin/ruff check cloudctl tests bench
    .venv/bin/ruff format --check cloudctl tests bench
    .venv/bin/python -m pytest "$@"
}

job=${1:-}
shift || true
case "$job" in
    demo) need_root; install_system_packages; install_python; run_demo ;;
    test)
        need_root
        mapfile -t extra < <(package_list scripts/test-packages.txt)
        APT_PACKAGES+=("${extra[@]}")
        install_system_packages; install_python; run_tests "$@" ;;
    *) echo "usage: bash scripts/bootstrap.sh demo|test [pytest args]" >&2; exit 2 ;;
esac
