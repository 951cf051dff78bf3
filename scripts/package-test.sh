#!/usr/bin/env bash
# The Debian package, proven under a real systemd (root only; scripts/test.sh runs it in CI):
#
# 1. man pages and shell completions (crates/xtask), the package (cargo-deb), lintian (no
#    errors), mandoc -T lint and man --warnings on every page;
# 2. a minimal Debian 12 root (mmdebstrap; cached in $NSMD_CI_CACHE, keyed on its inputs) with
#    nfs-common, rpcbind and nfs-kernel-server, booted with systemd-nspawn -b --private-network;
# 3. inside it, with nsenter into the container's PID 1: install over a running rpc.statd, then
#    Type=notify readiness, nfs-server, start-statd, reload, restart, the privilege drop,
#    rpcinfo, nsmctl, systemd-analyze security, nsmd@NAME in its own network namespace, an
#    upgrade, a reboot, remove (rpc.statd is back) and purge (the records are kept).
#
# A shell script rather than a Rust test: every step drives Debian's own tools (dpkg, apt,
# systemctl, mmdebstrap, nspawn) and checks their output; there is no Rust code under test
# here that a test binary would link.
#
# (Pipelines into grep use grep -c, which reads all its input: grep -q would end early and
# fail the pipeline under pipefail.)
# A missing prerequisite is an error. The container, its mounts and its cgroups are removed
# on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "package-test: FAILED: $*" >&2
    exit 1
}
step() { echo "==> package-test [$(($(date +%s) - start)) s]: $*"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (mmdebstrap, systemd-nspawn, nsenter)"
for tool in mmdebstrap systemd-nspawn nsenter unshare lintian mandoc man dpkg-deb; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/test.sh installs it)"
done
command -v cargo-deb >/dev/null || fail "cargo-deb is missing: cargo install cargo-deb --locked"

start=$(date +%s)

# --- 1. Build and lint ---------------------------------------------------------------------
step "man pages and completions (cargo run -p xtask -- dist target/dist)"
cargo run -q --locked -p xtask -- dist target/dist
for page in target/dist/man/*; do
    mandoc -T lint -W warning "$page" || fail "mandoc -T lint: $page"
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || fail "man --warnings $page: $warnings"
done

step "package (cargo deb)"
rm -rf target/debian
cargo deb -p nsmd --locked --strip -o target/debian/1/ >/dev/null
deb=$(ls target/debian/1/nsmd_*_amd64.deb)
# The same package as revision 2, for the upgrade.
cargo deb -p nsmd --locked --strip --no-build --deb-revision 2 -o target/debian/2/ >/dev/null
deb2=$(ls target/debian/2/nsmd_*-2_amd64.deb)

step "lintian $deb"
work_lintian=$(mktemp /tmp/nsmd-lintian.XXXXXX)
trap 'rm -f "$work_lintian"' EXIT
# Errors and warnings fail, except initial-upload-closes-no-bugs (no ITP bug to close: the
# package is not meant for the Debian archive), which is printed.
lintian --fail-on error,warning --show-overrides "$deb" >"$work_lintian" 2>&1 && lintian_rc=0 || lintian_rc=$?
grep -v '^running with root privileges' "$work_lintian" || true
grep -E '^[EW]: ' "$work_lintian" | grep -v -c ' initial-upload-closes-no-bugs ' >/dev/null \
    && fail "lintian reports errors or warnings on $deb"
[ "$lintian_rc" -eq 0 ] || grep -q ' initial-upload-closes-no-bugs ' "$work_lintian" \
    || fail "lintian failed on $deb"

# --- 2. A Debian root, booted --------------------------------------------------------------
suite=bookworm
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,dbus,nfs-common,rpcbind,nfs-kernel-server,iproute2
cache=${NSMD_CI_CACHE:-/var/cache/nsmd-ci}
key=$(printf '%s\n' "$suite" "$mirror" "$include" "v1" | sha256sum | cut -c1-16)
tarball=$cache/debian-$suite-$key.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    step "mmdebstrap $suite ($include) -> $tarball"
    mmdebstrap --variant=apt --format=tar --include="$include" "$suite" "$tarball.tmp" "$mirror" >/dev/null 2>&1 \
        || fail "mmdebstrap $suite failed (network? run it by hand to see why)"
    mv "$tarball.tmp" "$tarball"
fi

work=$(mktemp -d /tmp/nsmd-package-test.XXXXXX)
nspawn_pid=
cgroups=()
cleanup() {
    set +e
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # The loop's shell first (no reboot loop), then nspawn (it powers the container off).
        local n
        n=$(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null)
        kill -KILL "$nspawn_pid"
        for p in $n; do kill -TERM "$p"; done
        for _ in $(seq 1 30); do
            alive=
            for p in $n; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ -z "$alive" ] && break
            sleep 1
        done
        for p in $n; do kill -KILL "$p" 2>/dev/null; done
        for _ in $(seq 1 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$nspawn_pid" 2>/dev/null
    fi
    for cg in "${cgroups[@]}"; do
        find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$work" "$work_lintian"
}
trap cleanup EXIT

root=$work/root
mkdir -p "$root"
tar -C "$root" -xf "$tarball"
cp "$deb" "$root/root/nsmd.deb"
cp "$deb2" "$root/root/nsmd-2.deb"
echo nsmd-ci >"$root/etc/hostname"

# Its own cgroups (the host's PID 1 is not systemd; --keep-unit uses the caller's cgroup).
name=nsmd-pkg-$$
for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    if [ -d "$h" ]; then
        mkdir "$h/$name"
        cgroups+=("$h/$name")
    fi
done
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && {
    mkdir "/sys/fs/cgroup/$name"
    cgroups+=("/sys/fs/cgroup/$name")
}

step "boot (systemd-nspawn -b --private-network)"
boot_start=$(date +%s)
# A private mount namespace with its own tmpfs on /run/systemd: nspawn must not see or touch
# the host's /run/systemd.
(
    for cg in "${cgroups[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
    # nspawn exits with 133 when the container reboots: boot it again.
    exec unshare --mount --propagation private sh -c '
        mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd || exit 1
        while :; do
            systemd-nspawn -q -b -D "$1" --private-network --keep-unit --register=no -M "$2"
            rc=$?
            [ "$rc" -eq 133 ] || exit "$rc"
        done' sh "$root" "$name"
) >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
# Not a job of this shell: cleanup() polls it, and bash does not report its end ("Killed").
disown "$nspawn_pid"

# The container's PID 1: the process under nspawn whose PID in its own namespace is 1.
leader() {
    local d p
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ -r "/proc/$p/status" ] || continue
        if grep -qE '^NSpid:\s+[0-9]+\s+1$' "/proc/$p/status" 2>/dev/null \
            && [ "$(stat -c %i "/proc/$p/root/etc/hostname" 2>/dev/null)" = "$(stat -c %i "$root/etc/hostname")" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
wait_boot() {
    local pid=
    for _ in $(seq 1 120); do
        kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log" >&2; fail "systemd-nspawn exited"; }
        if pid=$(leader); then
            # degraded is fine: nfs-server.service cannot mount nfsd in a container.
            state=$(nsenter -t "$pid" -a systemctl is-system-running --wait 2>/dev/null || true)
            case "$state" in running | degraded)
                echo "$pid"
                return 0
                ;;
            esac
        fi
        sleep 1
    done
    cat "$work/console.log" >&2
    fail "the container did not finish booting within 120 s"
}
pid1=$(wait_boot)
booted=$(date +%s)
echo "    booted in $((booted - boot_start)) s"
c() { nsenter -t "$pid1" -a "$@"; }
csh() { nsenter -t "$pid1" -a /bin/sh -c "$1"; }

# Every statd daemon of the node in the container, "comm pid" lines (nsmd's root helper, a
# child of nsmd with the same name, is part of that nsmd; nsmd@NAME serves another namespace).
statds() {
    csh 'for p in /proc/[0-9]*; do
        c=$(cat $p/comm 2>/dev/null) || continue
        pp=$(sed -n "s/^PPid:\t//p" $p/status 2>/dev/null)
        [ "$c" = nsmd ] && [ "$(cat /proc/$pp/comm 2>/dev/null)" = nsmd ] && continue
        grep -q "/system-nsmd.slice/" $p/cgroup 2>/dev/null && continue
        case "$c" in nsmd|rpc.statd) echo "$c ${p#/proc/}";; esac
    done'
}
# Exactly one statd runs, it is nsmd, and it is rpc-statd.service's main process: its pid.
one_nsmd() {
    local what=$1 s main
    s=$(statds)
    [ "$(echo "$s" | grep -c .)" = 1 ] || fail "$what: expected exactly one statd, found: ${s:-none}"
    case "$s" in nsmd\ *) ;; *) fail "$what: the statd is not nsmd: $s" ;; esac
    main=$(c systemctl show -P MainPID rpc-statd.service)
    [ "$s" = "nsmd $main" ] || fail "$what: nsmd ($s) is not rpc-statd.service's main process ($main)"
    echo "$main"
}

# --- 3. Checks -------------------------------------------------------------------------------
step "before: rpc.statd runs as rpc-statd.service; a record and the state to keep"
c systemctl start rpc-statd.service
statds | grep -c '^rpc.statd ' >/dev/null || fail "rpc.statd did not start before the install: $(statds)"
csh 'printf "0100007f 000186b5 00000004 00000010 0102030405060708090a0b0c0d0e0f10 client1.example.com nsmd-ci\n" >/var/lib/nfs/sm/client1.example.com && chown statd /var/lib/nfs/sm/client1.example.com'
# A service instance (on a loopback address: no nfsd in a container, so no unlock_ip) and an
# HA callout, configured before the install so that the first nsmd starts with them.
csh 'mkdir -p /etc/nsmd/instances.d /srv/svc1/statd/sm /srv/svc1/statd/sm.bak /srv/callout
    chmod 755 /srv/svc1/statd && chown statd /srv/svc1/statd/sm /srv/svc1/statd/sm.bak /srv/callout
    cat >/etc/nsmd/instances.d/svc1.toml <<EOF
hostname = "svc1.example.com"
addresses = ["127.0.0.51"]
state_dir = "/srv/svc1/statd"
[readiness]
rpcbind = []
timeout_seconds = 1
[release]
unlock_ip = false
EOF
    printf "#!/bin/sh\necho \"\$@\" >>/srv/callout/log\n" >/usr/local/sbin/nsmd-callout
    chmod 755 /usr/local/sbin/nsmd-callout
    printf "[statd]\nha-callout = /usr/local/sbin/nsmd-callout\n" >/etc/nfs.conf.d/callout.conf'
records() { csh 'cd /var/lib/nfs && find sm sm.bak -type f | sort | xargs -r sha256sum'; }

step "install: dpkg -i nsmd.deb over a running rpc.statd"
c dpkg -i /root/nsmd.deb >/dev/null
pid=$(one_nsmd "after the install")
[ "$(c systemctl show -P Type rpc-statd.service)" = notify ] || fail "rpc-statd.service is not Type=notify"
[ "$(c systemctl show -P ActiveState nsmd.service)" = active ] || fail "nsmd.service (alias) is not active"
[ "$(c systemctl show -P Id nsmd.service)" = rpc-statd.service ] || fail "nsmd.service is not an alias of rpc-statd.service"
c journalctl -u rpc-statd.service --no-pager | grep -c 'Started.*nsmd' >/dev/null \
    || fail "no 'Started' after READY=1 in the journal of rpc-statd.service"

step "privileges: nsmd runs as statd with CAP_NET_BIND_SERVICE only"
csh "grep -E '^(Uid|CapEff|CapBnd):' /proc/$pid/status" >"$work/status"
grep -qE "^Uid:\s+$(c id -u statd)\s" "$work/status" || fail "nsmd does not run as statd: $(cat "$work/status")"
grep -qE '^CapEff:\s+0000000000000400$' "$work/status" || fail "nsmd's effective capabilities: $(cat "$work/status")"

step "rpcinfo: 100024 is registered, on nsmd's port"
port=$(c rpcinfo -p 127.0.0.1 | awk '$1 == 100024 && $3 == "tcp" {print $4; exit}')
[ -n "$port" ] || fail "100024 is not registered with rpcbind: $(c rpcinfo -p 127.0.0.1)"
c ss -ltnp "sport = :$port" | grep -c "\"nsmd\",pid=$pid," >/dev/null || fail "port $port is not nsmd's: $(c ss -ltnp)"
c rpcinfo -T tcp 127.0.0.1 100024 1 >/dev/null || fail "rpcinfo cannot call nsmd's NULL procedure"

step "nsmctl status"
c nsmctl status >"$work/nsmctl" || fail "nsmctl status failed"
grep -qE '^node +node +yes' "$work/nsmctl" || fail "nsmctl status: $(cat "$work/nsmctl")"

step "a service instance: nsmctl takeover and release svc1 under the sandbox"
c nsmctl takeover svc1 >/dev/null || fail "nsmctl takeover svc1: $(c journalctl -u rpc-statd.service --no-pager | tail -5)"
c nsmctl status >"$work/nsmctl"
grep -qE '^svc1 +service +yes' "$work/nsmctl" || fail "svc1 is not active: $(cat "$work/nsmctl")"
[ "$(csh 'od -An -tu4 /srv/svc1/statd/state' | tr -d ' ')" -ge 1 ] || fail "svc1's state was not written"
c nsmctl state svc1 >/dev/null || fail "nsmctl state svc1: not active after the takeover"
# A restart must not forget that this node holds svc1 (instances/svc1.active in /run/nsmd).
c systemctl restart nsmd.service
rc=0
c nsmctl state svc1 >/dev/null || rc=$?
case "$rc" in 0 | 4 | 5) ;; *) fail "after a restart, nsmctl state svc1 exits $rc: the node forgot it holds svc1: $(c journalctl -u rpc-statd.service --no-pager | tail -n 12)" ;; esac
c nsmctl release svc1 >/dev/null 2>&1 || c nsmctl release --offline svc1 >/dev/null || fail "nsmctl release svc1"
rc=0
c nsmctl state svc1 >/dev/null || rc=$?
[ "$rc" -eq 3 ] || fail "nsmctl state svc1 exits $rc after the release (expected 3, inactive)"
pid=$(one_nsmd "after the service instance's restart")

step "the HA callout runs on SM_NOTIFY (Debian's sm-notify as the peer)"
csh 'mkdir -p /root/peer/sm /root/peer/sm.bak && printf "0100007f 000186b5 00000004 00000010 00000000000000000000000000000000 127.0.0.1 peer1.example.com\n" >/root/peer/sm/127.0.0.1'
c sm-notify -f -d -m 1 -v 127.0.0.1 -P /root/peer >"$work/sm-notify.log" 2>&1 \
    || fail "sm-notify could not notify nsmd: $(cat "$work/sm-notify.log")"
for _ in $(seq 1 20); do csh 'grep -qE "^sm-notify [^ ]+ 127.0.0.1 [0-9]+\$" /srv/callout/log' 2>/dev/null && break; sleep 0.5; done
csh 'grep -qE "^sm-notify [^ ]+ 127.0.0.1 [0-9]+\$" /srv/callout/log' 2>/dev/null \
    || fail "the HA callout did not run: $(cat "$work/sm-notify.log"; c journalctl -u rpc-statd.service --no-pager | tail)"

step "systemd-analyze security nsmd.service"
exposure=$(c systemd-analyze security nsmd.service --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "    exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.5) }' || fail "exposure ${exposure:-unknown} > 2.5"

step "systemctl start nfs-server keeps nsmd"
c systemctl start nfs-server.service >/dev/null 2>&1 || true # needs nfsd, which a container lacks
[ "$(one_nsmd "after nfs-server")" = "$pid" ] || fail "nfs-server restarted nsmd"

step "mount.nfs's start-statd keeps nsmd"
c /usr/sbin/start-statd || fail "start-statd failed"
[ "$(one_nsmd "after start-statd")" = "$pid" ] || fail "start-statd restarted nsmd"

step "systemctl reload rpc-statd"
c systemctl reload rpc-statd.service || fail "systemctl reload rpc-statd failed"
[ "$(one_nsmd "after reload")" = "$pid" ] || fail "reload restarted nsmd"
for _ in $(seq 1 20); do
    c journalctl -u rpc-statd.service --no-pager | grep -c 'SIGHUP: instance files reloaded' >/dev/null && break
    sleep 0.5
done
c journalctl -u rpc-statd.service --no-pager | grep -c 'SIGHUP: instance files reloaded' >/dev/null \
    || fail "nsmd did not log its reload"

step "systemctl restart rpc-statd, then nsmd"
c systemctl restart rpc-statd.service
pid2=$(one_nsmd "after restart rpc-statd")
[ "$pid2" != "$pid" ] || fail "restart did not restart nsmd"
c systemctl restart nsmd.service
pid=$(one_nsmd "after restart nsmd")

step "nsmd@svc2 in its own network namespace, beside the node's nsmd"
csh 'ip netns add svc2 && ip -n svc2 link set lo up'
csh 'mkdir -p /srv/svc2/statd/sm /srv/svc2/statd/sm.bak && chown statd /srv/svc2/statd/sm /srv/svc2/statd/sm.bak'
csh 'printf "NSMD_STATE_DIR=/srv/svc2/statd\nNSMD_ARGS=-L\n" >/etc/nsmd/svc2.env'
c systemctl start nsmd@svc2.service || { c journalctl -u nsmd@svc2.service --no-pager | tail -20; fail "nsmd@svc2 did not start"; }
tpid=$(c systemctl show -P MainPID nsmd@svc2.service)
[ "$(csh "readlink /proc/$tpid/ns/net")" = "$(csh 'stat -L -c net:[%i] /run/netns/svc2')" ] \
    || fail "nsmd@svc2 is not in the network namespace svc2"
[ "$(csh "readlink /proc/$tpid/ns/net")" != "$(csh "readlink /proc/$pid/ns/net")" ] \
    || fail "nsmd@svc2 shares the node's network namespace"
c nsmctl --control-socket /run/nsmd-svc2/nsmctl.sock status >/dev/null || fail "nsmctl status of nsmd@svc2"
[ "$(one_nsmd "beside nsmd@svc2")" = "$pid" ] || fail "nsmd@svc2 disturbed the node's nsmd"

step "upgrade: dpkg -i nsmd-2.deb"
c dpkg -i /root/nsmd-2.deb >/dev/null
pid2=$(one_nsmd "after the upgrade")
[ "$pid2" != "$pid" ] || fail "the upgrade did not restart nsmd on the new binary"
[ "$(c systemctl show -P ActiveState nsmd@svc2.service)" = active ] || fail "nsmd@svc2 is not active after the upgrade"
c systemctl stop nsmd@svc2.service

step "reboot"
c systemctl enable nfs-server.service >/dev/null 2>&1 || true
old=$pid1
c systemctl reboot || true
for _ in $(seq 1 60); do
    p=$(leader || true)
    [ -n "$p" ] && [ "$p" != "$old" ] && break
    sleep 1
done
pid1=$(wait_boot)
[ "$pid1" != "$old" ] || fail "the container did not reboot"
# After a reboot rpc-statd starts when something pulls it (nfs-server, a mount): pull it.
c /usr/sbin/start-statd
one_nsmd "after the reboot" >/dev/null
# The boot notification went through nsm-notify: the record moved to sm.bak/ (its peer does
# not resolve, so it stays there).
c journalctl -b -u rpc-statd-notify.service --no-pager | grep -c 'nsm-notify' >/dev/null \
    || fail "rpc-statd-notify.service did not run nsm-notify at boot"
csh 'test -f /var/lib/nfs/sm.bak/client1.example.com' || fail "the boot notification did not move sm/ to sm.bak/"

step "remove: rpc.statd is back, the records are kept"
before=$(records)
c dpkg -r nsmd >/dev/null
s=$(statds)
case "$s" in "rpc.statd "*) ;; *) fail "after remove, expected rpc.statd alone, found: ${s:-none}" ;; esac
[ "$(echo "$s" | grep -c .)" = 1 ] || fail "after remove: $s"
[ "$(records)" = "$before" ] || fail "remove changed /var/lib/nfs/sm*"
[ "$(c systemctl show -P MainPID rpc-statd.service)" = "${s#rpc.statd }" ] || fail "rpc.statd is not rpc-statd.service's"

step "purge: the records are kept"
csh 'rm -f /etc/nsmd/svc2.env /etc/nsmd/instances.d/svc1.toml'
c dpkg -P nsmd >/dev/null
[ "$(records)" = "$before" ] || fail "purge changed /var/lib/nfs/sm*"
csh 'test -f /var/lib/nfs/sm.bak/client1.example.com && test -f /var/lib/nfs/state' \
    || fail "purge removed the record or the state"
csh 'test ! -e /etc/nsmd' || fail "purge left /etc/nsmd"

end=$(date +%s)
echo "==> package-test: passed in $((end - start)) s (boot to the end: $((end - booted)) s)"
