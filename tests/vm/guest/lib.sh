# Helpers for the scripts the host runs in a guest (sourced before each one; bash, set -eu).
R=/host/results/$(hostname)
BIN=/host/bin
mkdir -p "$R"

now() { date +%s.%N; }
since() { awk "BEGIN{printf \"%.1f\", $(now) - $1}"; }
log() { echo "[$(hostname) $(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() { echo "FAIL on $(hostname): $*" >&2; exit 1; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s; fails naming WHAT on timeout.
wait_for() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after $secs s waiting for $what"
        sleep 0.1
    done
}

# Starts a daemon in the background, its output appended to $R/NAME.log; prints nothing.
daemon() {
    local logname=$1
    shift
    echo "=== $(date -u +%T.%N) $*" >>"$R/$logname.log"
    setsid "$@" >>"$R/$logname.log" 2>&1 </dev/null &
    echo $! >"/run/$logname.pid"
}

# start_capture NAME: every packet (any interface) to $R/NAME.pcap, until stop_capture.
start_capture() {
    : >"$R/tcpdump.log"
    daemon tcpdump tcpdump -i any -U -s 512 -w "$R/$1.pcap"
    wait_for 10 "tcpdump to start" grep -q listening "$R/tcpdump.log"
}

stop_capture() {
    if [ -s /run/tcpdump.pid ]; then
        kill -INT "$(cat /run/tcpdump.pid)" 2>/dev/null || true
        wait_for 10 "tcpdump to exit" sh -c '! kill -0 $(cat /run/tcpdump.pid)'
    fi
}

start_rpcbind() {
    modprobe lockd && modprobe nfsv3
    mkdir -p /run/rpcbind
    daemon rpcbind rpcbind -f -w
    wait_for 20 "rpcbind to answer on 127.0.0.1" rpcinfo -p 127.0.0.1
}

statd_answers() { rpcinfo -T tcp 127.0.0.1 100024 1 && rpcinfo -T udp 127.0.0.1 100024 1; }

# start_statd KIND [args]: KIND is rpc.statd or nsmd; both run in the foreground with debug
# logs and run their notifier (sm-notify / nsm-notify) as they do at boot.
start_statd() {
    local kind=$1
    shift
    case "$kind" in
        rpc.statd) daemon statd /usr/sbin/rpc.statd -F -d "$@" ;;
        nsmd) daemon statd "$BIN/nsmd" -F -d "$@" ;;
        *) fail "unknown statd $kind" ;;
    esac
}

wait_statd() { wait_for 60 "statd to be registered and answer NULL on 127.0.0.1 (TCP and UDP)" statd_answers; }

# Kills the running statd (SIGKILL: its rpcbind registration stays behind, as after a crash).
kill_statd() {
    local sig=${1:-KILL}
    if [ -s /run/statd.pid ] && kill -0 "$(cat /run/statd.pid)" 2>/dev/null; then
        kill -"$sig" "$(cat /run/statd.pid)"
        wait_for 20 "statd to exit" sh -c '! kill -0 $(cat /run/statd.pid)'
    fi
}

# A fresh state directory, as on a machine that never ran statd (the records of the previous
# round would be notified otherwise) and as at boot (the notifier's run-once lock gone).
reset_statd_dir() {
    rm -rf /var/lib/nfs/sm /var/lib/nfs/sm.bak /var/lib/nfs/state
    mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak
    chown statd /var/lib/nfs/sm /var/lib/nfs/sm.bak
    rm -f /run/sm-notify.pid
}

# What a reboot changes for statd beyond the processes: a new boot id (nsm-notify bumps the state
# once per boot) and no run-once lock (/run is a tmpfs). rpcbind, and with it the dead statd's
# registration, stays: that is what a crash restart of statd and nfsd leaves.
new_boot() {
    cat /proc/sys/kernel/random/uuid >/run/boot_id
    umount /proc/sys/kernel/random/boot_id 2>/dev/null || true
    mount --bind /run/boot_id /proc/sys/kernel/random/boot_id
    rm -f /run/sm-notify.pid
}

# The NFS server: grace is long enough for any reclaim; the scenarios end it when done.
start_nfsd() {
    modprobe nfsd
    mountpoint -q /proc/fs/nfsd || mount -t nfsd nfsd /proc/fs/nfsd
    if ! [ -s /run/mountd.pid ] || ! kill -0 "$(cat /run/mountd.pid)" 2>/dev/null; then
        daemon mountd rpc.mountd -F -N 4
    fi
    exportfs -a  # not -r: that would unexport what a service added with exportfs -o
    rpc.nfsd -N 4 -G "${GRACE:-90}" -L "${GRACE:-90}" 2
    wait_for 20 "lockd (100021) to be registered" rpcinfo -T udp 127.0.0.1 100021 4
}

stop_nfsd() {
    rpc.nfsd 0
}

end_grace() {
    echo Y >/proc/fs/lockd/nlm_end_grace
    [ ! -e /proc/fs/nfsd/v4_end_grace ] || echo Y >/proc/fs/nfsd/v4_end_grace 2>/dev/null || true
}

# Number of POSIX locks the kernel holds on FILE, from /proc/locks, which names a file by its
# device (major:minor in hex) and inode: two services' file systems have the same inodes.
locks_on() {
    local dev id
    dev=$((16#$(stat -c %D "$1")))
    id=$(printf '%02x:%02x:%d' $(((dev >> 8) & 0xfff)) $(((dev & 0xff) | ((dev >> 12) & 0xfff00))) \
        "$(stat -c %i "$1")")
    grep -c "POSIX .* $id " /proc/locks || true
}

# all_locked FILE...: every FILE has a lock in /proc/locks.
all_locked() {
    local f
    for f in "$@"; do [ "$(locks_on "$f")" -ge 1 ] || return 1; done
}

none_locked() {
    local f
    for f in "$@"; do [ "$(locks_on "$f")" -eq 0 ] || return 1; done
}

# conflicts FILE: a second process on this host cannot take a write lock on FILE.
conflicts() {
    python3 - "$1" <<'EOF'
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as e:
    sys.exit(0 if e.errno in (errno.EAGAIN, errno.EACCES) else 2)
sys.exit(1)
EOF
}

# hold_locks NAME FILE...: a process that takes a whole-file fcntl write lock on each FILE and
# keeps them; $R/NAME.locked appears once it holds them all.
hold_locks() {
    local name=$1
    shift
    rm -f "$R/$name.locked"
    daemon "$name" python3 /host/guest/hold_locks.py "$R/$name.locked" "$@"
    wait_for 60 "$name to lock $*" test -s "$R/$name.locked"
}

release_locks() {
    local name=$1
    if [ -s "/run/$name.pid" ]; then kill "$(cat "/run/$name.pid")" 2>/dev/null || true; fi
    rm -f "$R/$name.locked"
}

# Service instances (scenarios c and d): NAME's file system is on the shared disk DEV, its
# export /srv/NAME/export, its NSM state /srv/NAME/statd; it is mounted only where it runs.
write_instance() { # write_instance NAME ADDRESS
    mkdir -p /etc/nsmd/instances.d
    cat >"/etc/nsmd/instances.d/$1.toml" <<TOML
hostname = "nfs-$1"
addresses = ["$2"]
state_dir = "/srv/$1/statd"

[notify]
retry_seconds = 120

[readiness]
rpcbind = [100021, 100003]
timeout_seconds = 60

[release]
unlock_ip = true
exports = ["/srv/$1/export"]
TOML
}

# svc_up NAME DEV ADDRESS FSID: what the cluster does before `nsmctl takeover NAME`.
svc_up() {
    local name=$1 dev=$2 addr=$3 fsid=$4
    mkdir -p "/srv/$name"
    mount "/dev/$dev" "/srv/$name"
    if [ ! -d "/srv/$name/statd" ]; then
        mkdir -p "/srv/$name/export" "/srv/$name/statd/sm" "/srv/$name/statd/sm.bak"
        chmod 777 "/srv/$name/export"
        chown statd "/srv/$name/statd/sm" "/srv/$name/statd/sm.bak"
    fi
    exportfs -o "rw,sync,no_root_squash,no_subtree_check,fsid=$fsid" "198.51.100.0/24:/srv/$name/export"
    ip addr add "$addr/24" dev eth0
    arping -q -U -c 1 -I eth0 "$addr" || true
}

# svc_down NAME ADDRESS: what the cluster does after `nsmctl release NAME`.
svc_down() {
    local name=$1 addr=$2
    exportfs -u "198.51.100.0/24:/srv/$name/export"
    ip addr del "$addr/24" dev eth0
    # nfsd's file cache lets go of the files a moment later.
    wait_for 60 "/srv/$name to unmount" umount "/srv/$name"
}
