#!/bin/bash
# proto/capture.sh - capture real NSM / rpcbind messages from Debian's tools and
# turn them into the hex vectors in proto/vectors/.
#
# Needs root, Debian packages rpcbind, nfs-common, tcpdump, tshark, strace,
# iproute2, python3.  Not run in CI.  It touches nothing outside:
#   - two network namespaces nsmdcap-a (198.51.100.1, "server1") and
#     nsmdcap-b (198.51.100.2, "client1"), joined by a veth pair;
#   - /run/nsmdcap (private bind mount holding both hosts' mount namespaces,
#     hosts files and nsswitch.conf); inside each mount namespace /run and
#     /var/lib/nfs are private tmpfs;
#   - $OUT (default /tmp/nsmdcap-out): pcaps, strace logs, command logs;
#   - $VEC (default proto/vectors): the generated vector files.
# Every namespace, mount and process it creates is removed on exit (trap).
#
# Usage: sudo proto/capture.sh            (then review `git diff proto/vectors`)
#        KEEP_OUT=1 sudo proto/capture.sh (keep $OUT for inspection)
#
# Layout of a run (see proto/README.md for what each vector is):
#   host A: rpcbind -f -w; rpc.statd -F -d -L -p 32765 -P /var/lib/nfs under
#           strace (its rpcbind registration goes over /run/rpcbind.sock);
#           fake lockd (capture/rpcdrv.py fake-lockd) on 127.0.0.1:4045;
#           all of A's traffic (lo + veth0) is captured with tcpdump -i any.
#   host B: rpcbind -f -w; rpc.statd -F -d -L -p 32765 -P /var/lib/nfs (the
#           peer that answers sm-notify); the driver plays "client1" from here.

set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1   # keep proto/capture/ free of __pycache__

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/nsmdcap-out}
VEC=${VEC:-$HERE/vectors}
DRV="python3 $HERE/capture/rpcdrv.py"
W=/run/nsmdcap
STATD_PORT=32765
LOCKD_PORT=4045

[ "$(id -u)" = 0 ] || { echo "capture.sh: must run as root" >&2; exit 1; }
for t in rpcbind rpc.statd sm-notify rpcinfo tcpdump tshark strace ip nsenter unshare python3; do
    command -v "$t" >/dev/null || { echo "capture.sh: $t not found" >&2; exit 1; }
done

PIDS=()          # every background process we started, killed by pid on exit
STATD_A_STRACE=  # strace pid (statd A is its child)

# nsenter execs the command, so "${NSA[@]}" cmd & gives cmd's own pid in $!
# (never background the shell functions inA/inB: $! would be a subshell).
NSA=(nsenter --net=/run/netns/nsmdcap-a --mount=$W/mnt-a)
NSB=(nsenter --net=/run/netns/nsmdcap-b --mount=$W/mnt-b)
inA() { "${NSA[@]}" "$@"; }
inB() { "${NSB[@]}" "$@"; }

log() { printf '=== %s\n' "$*" >&2; }

alive() {      # running and not a zombie
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}
kill_pid() {   # kill one pid we started (TERM, then KILL), never by name
    local p=$1
    if alive "$p"; then
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 30); do alive "$p" || break; sleep 0.1; done
        alive "$p" && kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null || true   # reap it if it is our child
}

cleanup() {
    set +e
    trap - EXIT INT TERM
    log "cleanup"
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill_pid "${PIDS[i]}"; done
    for h in a b; do
        ip netns pids nsmdcap-$h 2>/dev/null | while read -r p; do kill_pid "$p"; done
        ip netns del nsmdcap-$h 2>/dev/null
        umount $W/mnt-$h 2>/dev/null
    done
    if mountpoint -q $W; then umount $W; fi
    rm -rf $W
    [ -n "${KEEP_OUT:-}" ] || [ -z "${DONE:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# ------------------------------------------------------------------ hosts ---
setup_hosts() {
    mkdir -p $W
    mountpoint -q $W || { mount --bind $W $W; mount --make-private $W; }
    local h
    for h in a b; do
        ip netns add nsmdcap-$h
        ip -n nsmdcap-$h link set lo up
        mkdir -p $W/$h
        touch $W/mnt-$h
        cat > $W/$h/hosts <<'EOF'
127.0.0.1	localhost
::1	localhost6 ip6-localhost ip6-loopback
198.51.100.1	server1.example.test server1
198.51.100.2	client1.example.test client1
EOF
        sed 's/^hosts:.*/hosts:          files/' /etc/nsswitch.conf > $W/$h/nsswitch.conf
        nsenter --net=/run/netns/nsmdcap-$h \
            unshare --mount=$W/mnt-$h --propagation private sh -ec "
                mount --bind $W/$h/hosts /etc/hosts
                mount --bind $W/$h/nsswitch.conf /etc/nsswitch.conf
                mount -t tmpfs -o mode=0755 nsmdcap /var/lib/nfs
                mkdir /var/lib/nfs/sm /var/lib/nfs/sm.bak
                chown statd:nogroup /var/lib/nfs/sm /var/lib/nfs/sm.bak
                mount -t tmpfs -o mode=0755 nsmdcap /run
                mkdir -p /run/rpcbind /run/lock
                chown _rpc:root /run/rpcbind"
    done
    ip link add name veth0 netns nsmdcap-a type veth peer name veth0 netns nsmdcap-b
    ip -n nsmdcap-a addr add 198.51.100.1/24 dev veth0
    ip -n nsmdcap-b addr add 198.51.100.2/24 dev veth0
    # no IPv6 on the veth: keeps neighbour discovery out of the captures
    inA sysctl -qw net.ipv6.conf.veth0.disable_ipv6=1
    inB sysctl -qw net.ipv6.conf.veth0.disable_ipv6=1
    ip -n nsmdcap-a link set veth0 up
    ip -n nsmdcap-b link set veth0 up
}

wait_for() {   # wait_for SECONDS CMD... : poll until CMD succeeds
    local n=$(($1 * 10)); shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1)); [ $n -gt 0 ] || return 1; sleep 0.1
    done
}

# ---------------------------------------------------------------- capture ---
# Each step gets $OUT/<step>.pcap (tcpdump -i any in host A) and
# $OUT/<step>.cmd (the commands run, quoted into the vectors' comments).
STEP=
TDPID=
step_begin() {
    STEP=$1
    log "step $STEP"
    : > "$OUT/$STEP.cmd"
    "${NSA[@]}" tcpdump -Z root -i any --immediate-mode -U -s 16384 -B 32768 -w "$OUT/$STEP.pcap" 'udp or tcp' \
        > "$OUT/$STEP.tcpdump.log" 2>&1 &
    TDPID=$!
    PIDS+=("$TDPID")
    wait_for 10 grep -q listening "$OUT/$STEP.tcpdump.log"
}
step_end() {
    sleep 0.5
    kill -INT "$TDPID"
    wait "$TDPID" || true
    TDPID=
    # immediate mode uses fixed-size ring frames: a big snaplen with a small
    # buffer drops packets.  Refuse a capture with drops.
    grep -q '^0 packets dropped by kernel' "$OUT/$STEP.tcpdump.log" || {
        echo "capture.sh: tcpdump dropped packets in step $STEP" >&2; cat "$OUT/$STEP.tcpdump.log" >&2; exit 1; }
}
# run HOST CMD... : run CMD in host a or b, record it in the step's .cmd file
run() {
    local h=$1; shift
    printf '%s: %s\n' "$h" "$*" >> "$OUT/$STEP.cmd"
    if [ "$h" = a ]; then inA "$@"; else inB "$@"; fi | tee -a "$OUT/$STEP.out"
}
# drv HOST ARGS... : one call of the python driver
drv() { local h=$1; shift; run "$h" $DRV call "$@"; }

save_disk() {  # save_disk NAME : copy host A's state dir to $OUT/disk/NAME/
    mkdir -p "$OUT/disk/$1"
    inA sh -c 'cd /var/lib/nfs && tar cf - .' | tar xf - -C "$OUT/disk/$1"
}

# ------------------------------------------------------------------- main ---
rm -rf "$OUT"
mkdir -p "$OUT" "$VEC"
ip netns list | grep -q '^nsmdcap-' && { echo "capture.sh: stale nsmdcap namespaces; remove them first" >&2; exit 1; }
setup_hosts

{
    echo "nfs-common=$(dpkg-query -W -f '${Version}' nfs-common)"
    echo "rpcbind=$(dpkg-query -W -f '${Version}' rpcbind)"
    echo "libtirpc3=$(dpkg-query -W -f '${Version}' libtirpc3)"
    echo "tshark=$(dpkg-query -W -f '${Version}' tshark)"
    echo "statd_cmd=rpc.statd -F -d -L -p $STATD_PORT -P /var/lib/nfs"
    echo "rpcbind_cmd=rpcbind -f -w"
    echo "lockd_port=$LOCKD_PORT"
} > "$OUT/meta.txt"

log "rpcbind in A and B"
for h in a b; do
    nsenter --net=/run/netns/nsmdcap-$h --mount=$W/mnt-$h rpcbind -f -w > "$OUT/rpcbind-$h.log" 2>&1 &
    PIDS+=("$!")
done
wait_for 10 inA test -S /run/rpcbind.sock
wait_for 10 inB test -S /run/rpcbind.sock

# 00: rpc.statd A starts: PMAP GETPORT probe over UDP (tcpdump) and its rpcbind
# UNSET/SET calls over AF_LOCAL (strace; tshark cannot see them).
step_begin 00-statd-start
printf 'a: strace -f -tt -xx -s 4096 -e trace=socket,connect,accept,accept4,close,write,writev,sendmsg,sendto,read,recvmsg,recvfrom rpc.statd -F -d -L -p %s -P /var/lib/nfs\n' \
    $STATD_PORT >> "$OUT/$STEP.cmd"
"${NSA[@]}" strace -f -tt -xx -s 4096 -o "$OUT/statd-a.strace" \
    -e trace=socket,connect,accept,accept4,close,write,writev,sendmsg,sendto,read,recvmsg,recvfrom \
    rpc.statd -F -d -L -p $STATD_PORT -P /var/lib/nfs > "$OUT/statd-a.log" 2>&1 &
STATD_A_STRACE=$!
PIDS+=("$STATD_A_STRACE")
wait_for 20 grep -q 'Waiting for client connections' "$OUT/statd-a.log"
step_end
"${NSB[@]}" rpc.statd -F -d -L -p $STATD_PORT -P /var/lib/nfs > "$OUT/statd-b.log" 2>&1 &
PIDS+=("$!")
wait_for 20 grep -q 'Waiting for client connections' "$OUT/statd-b.log"

# 01-05: rpcinfo against A's rpcbind and rpc.statd
step_begin 01-rpcinfo-null-udp;  run a rpcinfo -u 127.0.0.1 100024 1 || true; step_end
step_begin 02-rpcinfo-null-tcp;  run a rpcinfo -t 127.0.0.1 100024 1 || true; step_end
step_begin 03-rpcinfo-null-v2;   run a rpcinfo -u 127.0.0.1 100024 2 || true; step_end
step_begin 04-rpcinfo-dump;      run a rpcinfo -p 127.0.0.1 || true; step_end
step_begin 05-rpcinfo-getaddr-udp6; run a rpcinfo -T udp6 ::1 100024 1 || true; step_end

# 07: SM_STAT
step_begin 07-sm-stat
drv a --xid 0x6e736d01 --proc 1 --sm stat --mon-name localhost
drv a --xid 0x6e736d02 --proc 1 --sm stat --mon-name nosuchhost.example.test
drv a --xid 0x6e736d03 --proc 1 --sm stat --mon-name localhost --auth-sys \
    --stamp 0x6e736d64 --machine server1 --uid 0 --gid 0 --gids 0
drv a --xid 0x6e736d04 --proc 1 --sm stat --mon-name localhost --tcp
step_end

# 08: SM_MON (UDP, like old kernels; TCP, like current kernels), and refused
# from a non-loopback caller
step_begin 08-sm-mon
drv a --xid 0x6e736d10 --proc 2 --sm mon --mon-name client1.example.test --my-name server1 \
    --my-prog 100021 --my-vers 3 --my-proc 16 --priv 000102030405060708090a0b0c0d0e0f
save_disk 08-after-mon-udp
drv a --xid 0x6e736d11 --proc 2 --sm mon --mon-name localhost --my-name server1 \
    --my-prog 100021 --my-vers 3 --my-proc 16 --priv 101112131415161718191a1b1c1d1e1f --tcp
save_disk 08-after-mon-tcp
drv b --xid 0x6e736d12 --dst 198.51.100.1 --proc 2 --sm mon --mon-name client1.example.test \
    --my-name server1 --my-prog 100021 --my-vers 3 --my-proc 16 \
    --priv 000102030405060708090a0b0c0d0e0f
step_end

# 11: an SM_NOTIFY from client1 -> rpc.statd A calls the (fake) lockd back
step_begin 11-callback
printf 'a: %s fake-lockd --port %s --vers 3 --register --xid 0x6e736d20\n' "$DRV" $LOCKD_PORT >> "$OUT/$STEP.cmd"
"${NSA[@]}" $DRV fake-lockd --port $LOCKD_PORT --vers 3 --register --xid 0x6e736d20 > "$OUT/fake-lockd.log" 2>&1 &
PIDS+=("$!")
wait_for 10 grep -q 'fake lockd ready' "$OUT/fake-lockd.log"
drv b --xid 0x6e736d21 --src 198.51.100.2 --dst 198.51.100.1 --proc 6 --sm notify \
    --mon-name client1.example.test --state 3
wait_for 15 grep -q 'got call' "$OUT/fake-lockd.log"
step_end

# 09: SM_UNMON, SM_UNMON_ALL
step_begin 09-sm-unmon
drv a --xid 0x6e736d30 --proc 3 --sm unmon --mon-name client1.example.test --my-name server1 \
    --my-prog 100021 --my-vers 3 --my-proc 16
save_disk 09-after-unmon
drv a --xid 0x6e736d31 --proc 4 --sm unmon-all --my-name server1 \
    --my-prog 100021 --my-vers 3 --my-proc 16
save_disk 09-after-unmon-all
step_end

# 12: error replies from rpc.statd (libtirpc's svc layer and statd's dispatcher)
LONG=$(python3 -c 'print("a" * 2000)')
step_begin 12-errors
drv a --xid 0x6e736d40 --proc 7
drv a --xid 0x6e736d41 --proc 1 --sm stat --mon-name "$LONG"
# Truncated SM_STAT over UDP: libtirpc's svc_dg decodes from its whole 8800-byte
# receive buffer, so the missing bytes are read from the previous datagram.
# Each truncated call is preceded by a full call that leaves a known name there.
drv a --xid 0x6e736d42 --proc 1 --sm stat --mon-name localhost
drv a --xid 0x6e736d43 --proc 1 --sm stat --mon-name localhost --truncate 4
drv a --xid 0x6e736d44 --proc 1 --sm stat --mon-name nosuchhost.example.test
drv a --xid 0x6e736d45 --proc 1 --sm stat --mon-name localhost --truncate 4
drv a --xid 0x6e736d46 --proc 1 --sm stat --mon-name localhost --truncate 0
drv a --xid 0x6e736d47 --proc 1 --sm stat --mon-name localhost --truncate 4 --tcp
drv a --xid 0x6e736d48 --prog 100025 --proc 0
drv a --xid 0x6e736d49 --proc 1 --sm stat --mon-name localhost --cred-flavor 3
drv a --xid 0x6e736d4a --rpcvers 3 --proc 0 --timeout 2 || true
drv a --xid 0x6e736d4b --proc 5
step_end

# 10: sm-notify on A notifies the peers recorded in sm/: client1 (IPv4, over the
# veth: PMAP GETPORT + SM_NOTIFY to B's rpc.statd) and localhost6 (IPv6 ::1:
# RPCB GETADDR v3 + SM_NOTIFY to A's own rpc.statd).  The records are written
# by rpc.statd A itself (SM_MON), outside the capture.
step_begin 10-prep
drv a --xid 0x6e736d50 --proc 2 --sm mon --mon-name client1.example.test --my-name server1 \
    --priv 000102030405060708090a0b0c0d0e0f
drv a --xid 0x6e736d51 --proc 2 --sm mon --mon-name client1 --my-name server1.example.test \
    --priv 202122232425262728292a2b2c2d2e2f
drv a --xid 0x6e736d52 --proc 2 --sm mon --mon-name localhost6 --my-name server1 \
    --priv 303132333435363738393a3b3c3d3e3f
step_end
save_disk 10-before-sm-notify
step_begin 10-sm-notify
run a timeout 60 sm-notify -d -f -P /var/lib/nfs 2>&1 || true
sleep 1
step_end
save_disk 10-after-sm-notify

# 13: rpc.statd A exits on SIGTERM and unregisters (AF_LOCAL, strace)
log "stop rpc.statd A"
STATD_A_PID=$(inA cat /run/rpc.statd.pid)
kill -TERM "$STATD_A_PID"
wait "$STATD_A_STRACE" || true
cp "$OUT/statd-a.log" "$OUT/statd-a.log.final"

log "extract vectors"
python3 "$HERE/capture/extract.py" --out "$OUT" --vectors "$VEC"
python3 "$HERE/capture/check_vectors.py" "$VEC"
DONE=1
