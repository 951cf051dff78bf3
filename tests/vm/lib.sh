# Host side of the VM kit, sourced by tests/vm/run.sh: boots guests under qemu (TCG), runs
# scripts in them and collects their logs. Every wait has a timeout that fails the run with a
# message naming what was waited for; every qemu started here is killed on exit.
#
# A run directory ($VM_RUN) is shared with every guest over 9p at /host:
#   guest/            the guest's agent and helper library (tests/vm/guest)
#   bin/              nsmd, nsm-notify, nsmctl (built on the host; the guest has the same glibc)
#   ctl/NAME/N.sh     scripts for guest NAME, run in order; N.out and N.rc are the answers
#   results/NAME/     what NAME writes: daemon logs, captures, dmesg; console.log from qemu

declare -A VM_PID=() VM_N=()
VM_MCAST_PORT=$((20000 + $$ % 20000))
VM_HOSTS=""

vm_log() { echo "vm: $(date -u +%T) $*" >&2; }

vm_fail() {
    echo "vm: FAIL: $*" >&2
    exit 1
}

# Kills every qemu this run started (by pid), after asking the live ones for their dmesg.
vm_cleanup() {
    local name
    for name in "${!VM_PID[@]}"; do
        if kill -0 "${VM_PID[$name]}" 2>/dev/null; then
            VM_TIMEOUT_QUIET=1 vm_run -t 15 "$name" "collect dmesg" \
                <<<'stop_capture; dmesg >$R/dmesg-final.txt' \
                >/dev/null 2>&1 || true
            kill "${VM_PID[$name]}" 2>/dev/null || true
        fi
    done
    for name in "${!VM_PID[@]}"; do
        wait "${VM_PID[$name]}" 2>/dev/null || true
    done
    VM_PID=()
}

# vm_boot NAME IP MAC [qemu args...]: starts a guest; vm_ready waits for it.
vm_boot() {
    local name=$1 ip=$2 mac=$3
    shift 3
    mkdir -p "$VM_RUN/ctl/$name" "$VM_RUN/results/$name"
    rm -f "$VM_RUN/ctl/$name"/*
    qemu-system-x86_64 -accel "tcg,tb-size=${NSMD_VM_TB_SIZE:-256}" -m "${NSMD_VM_MEM:-1200}" -smp 1 \
        -nodefaults -no-user-config -display none -monitor none -no-reboot \
        -serial "file:$VM_RUN/results/$name/console.log" \
        -kernel "$VM_IMAGE/vmlinux" -initrd "$VM_IMAGE/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet rdinit=/init nsmvm.name=$name nsmvm.ip=$ip nsmvm.hosts=$VM_HOSTS" \
        -virtfs "local,path=$VM_RUN,mount_tag=host,security_model=none,id=host" \
        -netdev "socket,id=n0,mcast=230.0.0.1:$VM_MCAST_PORT,localaddr=127.0.0.1" \
        -device "virtio-net-pci,netdev=n0,mac=$mac" \
        "$@" >"$VM_RUN/results/$name/qemu.log" 2>&1 &
    VM_PID[$name]=$!
    VM_N[$name]=0
    VM_BOOTED_AT[$name]=$(date +%s.%N)
}
declare -A VM_BOOTED_AT=()

vm_ready() {
    local name deadline
    for name in "$@"; do
        deadline=$((SECONDS + ${NSMD_VM_BOOT_TIMEOUT:-180}))
        until [ -s "$VM_RUN/ctl/$name/ready" ]; do
            kill -0 "${VM_PID[$name]}" 2>/dev/null \
                || vm_fail "guest $name: qemu exited while booting (see $VM_RUN/results/$name/qemu.log and console.log)"
            [ "$SECONDS" -lt "$deadline" ] \
                || vm_fail "guest $name did not reach its agent within ${NSMD_VM_BOOT_TIMEOUT:-180} s (waited for ctl/$name/ready; console: $VM_RUN/results/$name/console.log)"
            sleep 0.2
        done
        vm_log "$name up: agent at $(cat "$VM_RUN/ctl/$name/ready") s guest time, $(echo "$(date +%s.%N) - ${VM_BOOTED_AT[$name]}" | bc) s after qemu started"
    done
}

# vm_run [-t SECONDS] NAME WHAT < script: runs the script (bash, with guest/lib.sh sourced) in
# guest NAME and prints its output. WHAT says what it does/waits for, for the logs and for the
# timeout message. Returns the script's exit status.
vm_run() {
    local timeout=${NSMD_VM_CMD_TIMEOUT:-120}
    if [ "$1" = -t ]; then timeout=$2; shift 2; fi
    local name=$1 what=$2 n=${VM_N[$1]} dir="$VM_RUN/ctl/$1" deadline rc
    VM_N[$name]=$((n + 1))
    { echo "set -euo pipefail; . /host/guest/lib.sh"; cat; } >"$dir/$n.sh.tmp"
    mv "$dir/$n.sh.tmp" "$dir/$n.sh"
    deadline=$((SECONDS + timeout))
    until [ -e "$dir/$n.rc" ]; do
        if ! kill -0 "${VM_PID[$name]}" 2>/dev/null; then
            [ -n "${VM_TIMEOUT_QUIET:-}" ] && return 1
            vm_fail "guest $name died while running: $what (see $VM_RUN/results/$name/console.log)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            [ -n "${VM_TIMEOUT_QUIET:-}" ] && return 1
            cat "$dir/$n.out" >&2 2>/dev/null || true
            vm_fail "guest $name: timed out after $timeout s waiting for: $what (script $dir/$n.sh)"
        fi
        sleep 0.1
    done
    rc=$(cat "$dir/$n.rc")
    cat "$dir/$n.out"
    return "$rc"
}

# vm_must [-t SECONDS] NAME WHAT < script: vm_run, and a failure fails the run.
# (Never call vm_run or vm_must in a subshell or a pipeline: each guest's script counter
# lives in this shell. Redirect their output to a file instead.)
vm_must() {
    local args=("$@")
    [ "$1" = -t ] && shift 2
    if ! vm_run "${args[@]}" >"$VM_RUN/last.out"; then
        cat "$VM_RUN/last.out" >&2
        vm_fail "guest $1: $2"
    fi
    cat "$VM_RUN/last.out"
}
