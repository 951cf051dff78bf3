#!/usr/bin/env bash
# The kernel scenarios: Debian 12's kernel (lockd, nfsd, the NFSv3 client) in qemu guests, with
# nsmd and, as the reference, Debian's rpc.statd. Run as root from the repository:
#
#   tests/vm/run.sh [SCENARIO...]      (a b c d; default: all)
#
# Needs qemu-system-x86, mmdebstrap, cpio, tshark and a built target/debug/{nsmd,nsm-notify,nsmctl}
# (it runs `cargo build --bins` first). Results (console logs, dmesg, daemon logs, captures) go
# to $NSMD_VM_RESULTS (default target/vm/<time>). Exits non-zero on any failed check or timeout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/tests/vm"
. "$here/lib.sh"

scenarios=("$@")
[ "${#scenarios[@]}" -gt 0 ] || scenarios=(a b c d)

[ "$(id -u)" -eq 0 ] || vm_fail "the kernel scenarios need root (qemu's 9p share, mmdebstrap)"
for tool in qemu-system-x86_64 mmdebstrap cpio tshark bc; do
    command -v "$tool" >/dev/null \
        || vm_fail "$tool is missing: install the packages listed in scripts/test.sh (as root it installs them)"
done

t_start=$SECONDS
VM_IMAGE=$("$here/build-image.sh")
KERNEL="$(cat "$VM_IMAGE/kernel.txt")"
(cd "$repo" && cargo build --bins --locked -q)
VM_RUN=${NSMD_VM_RESULTS:-$repo/target/vm/$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$VM_RUN/bin" "$VM_RUN/ctl" "$VM_RUN/results"
cp "$repo"/target/debug/{nsmd,nsm-notify,nsmctl} "$VM_RUN/bin/"
rm -rf "$VM_RUN/guest"
cp -r "$here/guest" "$VM_RUN/guest"
cp "$VM_IMAGE/versions.txt" "$VM_RUN/results/guest-packages.txt"
trap 'rc=$?; vm_cleanup; vm_log "kernel $KERNEL; results in $VM_RUN"; [ $rc -eq 0 ] || vm_log "FAILED"; exit $rc' EXIT
vm_log "kernel $KERNEL; image $VM_IMAGE; results $VM_RUN"

VM_HOSTS="198.51.100.1,server1+198.51.100.2,server2+198.51.100.10,client+198.51.100.50,nfs-svc1+198.51.100.51,nfs-svc2"
SUMMARY="$VM_RUN/summary.txt"
: >"$SUMMARY"
result() { echo "$*" | tee -a "$SUMMARY" >&2; }
FAILURES=0
check() { # check WHAT COMMAND...: records a failed check, goes on
    if "${@:2}"; then result "ok   $1"; else result "FAIL $1"; FAILURES=$((FAILURES + 1)); fi
}

for s in "${scenarios[@]}"; do
    case "$s" in
        a | b | c | d) . "$here/scenario-$s.sh" ;;
        *) vm_fail "unknown scenario $s (a, b, c or d)" ;;
    esac
done

vm_cleanup
result "kernel $KERNEL; VM part took $((SECONDS - t_start)) s"
[ "$FAILURES" -eq 0 ] || vm_fail "$FAILURES check(s) failed (summary: $SUMMARY)"
vm_log "all scenarios passed"
