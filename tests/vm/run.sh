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
for tool in qemu-system-x86_64 mmdebstrap cpio tshark bc mkfs.ext4; do
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
note() { # note WHAT COMMAND...: as check, for the reference's known failures: never fails the run
    if "${@:2}"; then result "ok   $1 (reference)"; else result "note $1: NO (reference, known race)"; fi
}

# Two shared disks (one file system per service, for c and d), attached to both servers.
for d in svc1 svc2; do
    truncate -s 64M "$VM_RUN/$d.img"
    mkfs.ext4 -q -F -L "$d" "$VM_RUN/$d.img"
done
disks=()
for d in svc1 svc2; do
    disks+=(-drive "file=$VM_RUN/$d.img,format=raw,if=none,id=$d,cache=none,file.locking=off"
        -device "virtio-blk-pci,drive=$d,share-rw=on")
done

# boot_guests NAME...: boots those not running yet; each gets rpcbind, a server nfsd too.
boot_guests() {
    local g booted=()
    for g in "$@"; do
        [ -z "${VM_PID[$g]:-}" ] || continue
        case $g in
            server1) vm_boot server1 198.51.100.1 52:54:00:00:00:01 "${disks[@]}" ;;
            server2) vm_boot server2 198.51.100.2 52:54:00:00:00:02 "${disks[@]}" ;;
            client) vm_boot client 198.51.100.10 52:54:00:00:00:10 ;;
        esac
        booted+=("$g")
    done
    [ "${#booted[@]}" -gt 0 ] || return 0
    vm_ready "${booted[@]}"
    for g in "${booted[@]}"; do
        vm_must "$g" "start rpcbind" <<<'start_rpcbind'
        case $g in
            server*) vm_must "$g" "start nfsd with an export" <<'EOF'
mkdir -p /export
echo "/export 198.51.100.0/24(rw,sync,no_root_squash,no_subtree_check,fsid=1)" >/etc/exports
start_nfsd
end_grace
EOF
                ;;
        esac
    done
}

# setup_instances: nsmd with the service instances svc1 and svc2 on both servers, nsmd on the
# client (once per run).
INSTANCES_UP=""
setup_instances() {
    [ -z "$INSTANCES_UP" ] || return 0
    INSTANCES_UP=1
    boot_guests server1 server2 client
    # nfsd restarts after the switch: a new statd under a running lockd would not hear of the
    # peers lockd already monitors. Not before: with no statd registered, the SM_UNMONs lockd
    # sends when nfsd stops block `rpc.nfsd 0` for a minute.
    local g
    for g in server1 server2; do
        vm_must "$g" "start nsmd with the service instances svc1 and svc2" <<'EOF'
kill_statd TERM
reset_statd_dir
write_instance svc1 198.51.100.50
write_instance svc2 198.51.100.51
start_statd nsmd --instances /etc/nsmd/instances.d
wait_statd
stop_nfsd
start_nfsd
end_grace
EOF
    done
    vm_must client "start nsmd on the client" <<'EOF'
kill_statd TERM
reset_statd_dir
start_statd nsmd
wait_statd
EOF
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
rm -f "$VM_RUN"/svc*.img
vm_log "all scenarios passed"
