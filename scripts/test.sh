#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and black-box tests, benchmark build, fuzz
# smoke runs. As root it first installs the Debian packages the black-box tests need
# (rpcbind, nfs-common, iproute2, tshark, python3 for the conformance suite's broken statds,
# mmdebstrap, systemd-container, lintian and mandoc for the package test, fuse3 for the
# power-loss and disk-fault tests' FUSE file system, qemu for the kernel scenarios, ...) and
# cargo-deb, and makes missing prerequisites a failure.
# Not as root, the network-namespace tests print SKIPPED and the rest runs.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rpcbind nfs-common iproute2 util-linux mount procps tshark python3 python3-prometheus-client
          resource-agents libxml2-utils shellcheck pacemaker pacemaker-cli-utils corosync crmsh
          nfs-ganesha nfs-ganesha-vfs dbus-daemon dbus-bin
          mmdebstrap lintian mandoc man-db ctdb jq iptables ethtool fuse3
          qemu-system-x86 cpio bc e2fsprogs)

if [ "$(id -u)" -eq 0 ]; then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing Debian packages for the black-box tests: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # systemd-nspawn for scripts/package-test.sh, at the host's systemd version: a newer
    # systemd-container would make apt upgrade the host's systemd too.
    sd=$(dpkg-query -W -f='${Version}' systemd 2>/dev/null) \
        || { echo "error: systemd is not installed (package-test.sh needs systemd-nspawn)" >&2; exit 1; }
    if [ "$(dpkg-query -W -f='${Version}' systemd-container 2>/dev/null)" != "$sd" ]; then
        echo "==> installing systemd-container=$sd"
        apt-get install -y -qq --no-install-recommends "systemd-container=$sd" >/dev/null
    fi
    if ! command -v cargo-deb >/dev/null; then
        echo "==> installing cargo-deb (crates.io)"
        cargo install cargo-deb --locked --quiet
    fi
    # The FUSE tests need /dev/fuse: load the module if the kernel has it but did not load it.
    [ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
    # Black-box tests must run here: a missing prerequisite fails them instead of skipping.
    export NSMD_REQUIRE_NETNS=1
elif [ "${CI:-}" = "true" ]; then
    echo "error: CI must run as root: the network-namespace tests need it" >&2
    exit 1
else
    echo "*** not root: the network-namespace tests against rpcbind, rpcinfo and tshark will print SKIPPED."
    echo "*** Run this script as root to run them (it installs what they need)."
fi

echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
echo "==> benchmarks build"
cargo bench --workspace --locked --no-run
if [ "$(id -u)" -eq 0 ]; then
    echo "==> the Debian package under systemd (scripts/package-test.sh)"
    scripts/package-test.sh
else
    echo "*** not root: scripts/package-test.sh (the Debian package under systemd-nspawn) SKIPPED"
fi
if [ -x fuzz/smoke.sh ]; then
    echo "==> fuzz smoke runs (${FUZZ_SECONDS:-15} s per target)"
    fuzz/smoke.sh
fi
if [ "$(id -u)" -eq 0 ]; then
    echo "==> kernel scenarios: Debian 12's kernel in qemu guests (tests/vm/run.sh)"
    tests/vm/run.sh
else
    echo "*** SKIPPED kernel scenarios (tests/vm/run.sh): they need root"
fi
echo "==> all tests passed"
