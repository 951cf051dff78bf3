# Scenario c (sourced by run.sh): the service svc1 (address 198.51.100.50, name nfs-svc1, its
# file system on the disk both servers see) moves from server1 to server2 while the client holds
# fcntl locks through it. server1's `nsmctl release` must make the kernel drop the locks
# (unlock_ip, unlock_filesystem); server2's nfsd restarts into grace, `nsmctl takeover`
# notifies as nfs-svc1 from 198.51.100.50, the client reclaims there, and server2's lockd's
# SM_MON for the client lands in svc1's sm/ on the shared disk.

boot_guests server1 server2 client
for g in server1 server2 client; do
    vm_must "$g" "capture for scenario c" <<<'stop_capture; start_capture c'
done
# The reference first: Debian's rpc.statd as HA clusters run it today (resource-agents'
# nfsserver and nfsnotify): statd's directory on the service's file system, nfsd restarted on
# the new node, then `sm-notify -f -v ADDRESS` from that directory. Release is the same kernel
# files written by hand. Both ends run rpc.statd; server1's nfsd restarts so that its lockd
# monitors the client afresh (with the new statd).
vm_must client "start rpc.statd on the client" <<'EOF'
kill_statd TERM
reset_statd_dir
start_statd rpc.statd
wait_statd
EOF
vm_must server2 "stop statd on server2 (the service's node-to-be)" <<<'kill_statd TERM'
vm_must server1 "svc1 up on server1 with rpc.statd on its directory" <<'EOF'
stop_nfsd
kill_statd TERM
svc_up svc1 vda 198.51.100.50 2
rm -f /srv/svc1/statd/state /srv/svc1/statd/sm/* /srv/svc1/statd/sm.bak/*
start_statd rpc.statd -L -P /srv/svc1/statd
wait_statd
start_nfsd
end_grace
EOF
vm_must client "mount svc1 and lock f1 f2 through it (rpc.statd)" <<'EOF'
dmesg -c >>$R/dmesg.txt
mkdir -p /mnt/c
mount -t nfs -o vers=3,proto=tcp,hard 198.51.100.50:/srv/svc1/export /mnt/c
hold_locks appc /mnt/c/f1 /mnt/c/f2
EOF
vm_must server1 "server1 holds the client's locks (rpc.statd)" >"$VM_RUN/c-ref-before.out" <<'EOF'
wait_for 30 "the client's locks on server1" all_locked /srv/svc1/export/f1 /srv/svc1/export/f2
echo "SVC1 SM: $(ls /srv/svc1/statd/sm | tr '\n' ' ')"
EOF
t0=$(date +%s.%N)
vm_must server1 "release svc1 by hand (rpc.statd)" <<'EOF'
echo 198.51.100.50 >/proc/fs/nfsd/unlock_ip
echo /srv/svc1/export >/proc/fs/nfsd/unlock_filesystem
kill_statd TERM
svc_down svc1 198.51.100.50
EOF
vm_run -t 200 server2 "svc1 up on server2 with rpc.statd, sm-notify -v, the client's reclaim" \
    >"$VM_RUN/c-ref-takeover.out" <<'EOF' || true
stop_nfsd
svc_up svc1 vda 198.51.100.50 2
start_statd rpc.statd -L -P /srv/svc1/statd
wait_statd
start_nfsd
sm-notify -d -f -v 198.51.100.50 -P /srv/svc1/statd >>$R/sm-notify.log 2>&1
files="/srv/svc1/export/f1 /srv/svc1/export/f2"
deadline=$(($(date +%s) + 120))
until all_locked $files || [ $(date +%s) -ge $deadline ]; do sleep 0.1; done
all_locked $files && echo RECLAIMED || echo "NOT RECLAIMED within 120 s of the takeover"
echo "SVC1 SM: $(ls /srv/svc1/statd/sm | tr '\n' ' ')"
end_grace
EOF
t1=$(date +%s.%N)
cat "$VM_RUN/c-ref-takeover.out" >&2
vm_must client "collect the client's view, release, unmount (rpc.statd)" >"$VM_RUN/c-ref-client.out" <<'EOF'
dmesg -c | tee -a $R/dmesg.txt | grep -E 'lockd|NFS|nfs|statd' || true
release_locks appc
umount /mnt/c
EOF
check "c rpc.statd: server2 holds every lock again after the failover" grep -q '^RECLAIMED' "$VM_RUN/c-ref-takeover.out"
check "c rpc.statd: the client's kernel reclaimed without error" \
    sh -c "! grep -q 'failed to reclaim' '$VM_RUN/c-ref-client.out'"
t=$(echo "$t1 - $t0" | bc)
echo "rpc.statd $t" >"$VM_RUN/times-c.txt"
result "time c rpc.statd: release by hand on server1 -> locks held on server2: $t s (host clock, sm-notify included)"
vm_must server2 "release svc1 on server2 (rpc.statd), its records cleared for nsmd's round" <<'EOF'
echo 198.51.100.50 >/proc/fs/nfsd/unlock_ip
echo /srv/svc1/export >/proc/fs/nfsd/unlock_filesystem
kill_statd TERM
rm -f /srv/svc1/statd/sm/* /srv/svc1/statd/sm.bak/*
svc_down svc1 198.51.100.50
EOF

# Then nsmd with its service instances.
setup_instances

vm_must server1 "svc1 up on server1 and taken over" <<'EOF'
svc_up svc1 vda 198.51.100.50 2
/host/bin/nsmctl takeover svc1
EOF
vm_must client "mount nfs-svc1 and lock f1 f2 through it" <<'EOF'
dmesg -c >>$R/dmesg.txt
mkdir -p /mnt/c
mount -t nfs -o vers=3,proto=tcp,hard 198.51.100.50:/srv/svc1/export /mnt/c
hold_locks appc /mnt/c/f1 /mnt/c/f2
EOF
vm_must server1 "server1 holds the client's locks; svc1 monitors the client" >"$VM_RUN/c-server1-before.out" <<'EOF'
wait_for 30 "the client's locks on server1" all_locked /srv/svc1/export/f1 /srv/svc1/export/f2
echo "SVC1 SM: $(ls /srv/svc1/statd/sm | tr '\n' ' ')"
echo "NODE SM: $(ls /var/lib/nfs/sm | tr '\n' ' ')"
EOF
check "c: server1's SM_MON for the client is recorded in svc1's sm/" \
    grep -q '^SVC1 SM: .*198\.51\.100\.10' "$VM_RUN/c-server1-before.out"

t0=$(date +%s.%N)
vm_must server1 "release svc1 on server1" >"$VM_RUN/c-release.out" <<'EOF'
/host/bin/nsmctl release svc1
none_locked /srv/svc1/export/f1 /srv/svc1/export/f2 && echo "RELEASE DROPPED THE LOCKS" || cat /proc/locks
svc_down svc1 198.51.100.50
EOF
cat "$VM_RUN/c-release.out" >&2
check "c: nsmctl release on server1 made the kernel drop svc1's locks" \
    grep -q '^RELEASE DROPPED THE LOCKS' "$VM_RUN/c-release.out"
vm_run -t 200 server2 "svc1 up on server2, nfsd in grace, takeover, the client's reclaim" \
    >"$VM_RUN/c-takeover.out" <<'EOF' || true
svc_up svc1 vda 198.51.100.50 2
stop_nfsd
start_nfsd
/host/bin/nsmctl takeover svc1
files="/srv/svc1/export/f1 /srv/svc1/export/f2"
deadline=$(($(date +%s) + 120))
until all_locked $files || [ $(date +%s) -ge $deadline ]; do sleep 0.1; done
all_locked $files && echo RECLAIMED || echo "NOT RECLAIMED within 120 s of the takeover"
for f in $files; do conflicts $f && echo "CONFLICT $f" || echo "NO CONFLICT $f"; done
echo "SVC1 SM: $(ls /srv/svc1/statd/sm | tr '\n' ' ')"
echo "SVC1 SM.BAK: $(ls /srv/svc1/statd/sm.bak | tr '\n' ' ')"
/host/bin/nsmctl status
EOF
t1=$(date +%s.%N)
cat "$VM_RUN/c-takeover.out" >&2
vm_must client "collect the client's view" >"$VM_RUN/c-client.out" <<'EOF'
dmesg -c | tee -a $R/dmesg.txt | grep -E 'lockd|NFS|nfs|statd' || true
kill -0 $(cat $R/appc.locked) && echo "APP ALIVE"
EOF
cat "$VM_RUN/c-client.out" >&2
check "c nsmd: server2 holds every lock again after the failover" grep -q '^RECLAIMED' "$VM_RUN/c-takeover.out"
check "c nsmd: a second process on server2 conflicts with each lock" \
    test "$(grep -c '^CONFLICT' "$VM_RUN/c-takeover.out")" -eq 2
check "c nsmd: the client's kernel reclaimed without error" \
    sh -c "! grep -q 'failed to reclaim' '$VM_RUN/c-client.out'"
check "c nsmd: server2's SM_MON for the client is recorded in svc1's sm/" \
    grep -q '^SVC1 SM: .*198\.51\.100\.10' "$VM_RUN/c-takeover.out"
vm_must server2 "stop the capture" <<<'stop_capture'
notifies=$(tshark -r "$VM_RUN/results/server2/c.pcap" -Y 'rpc.program==100024 && rpc.procedure==6 && rpc.msgtyp==0 && ip.dst==198.51.100.10' \
    -T fields -E separator='|' -e ip.src -e stat.mon_id.name 2>/dev/null)
echo "$notifies" >"$VM_RUN/c-notifies.txt"
# First the service's name, then (as CTDB does) its address; retries repeat them.
check "c nsmd: the takeover notified the client from 198.51.100.50, first as nfs-svc1, only with the service's names" \
    awk -F'|' 'NR==1 && $2 != "nfs-svc1" {bad=1} {n++; if ($1 != "198.51.100.50" || ($2 != "nfs-svc1" && $2 != "198.51.100.50")) bad=1} END{exit bad || !n}' <<<"$notifies"
t=$(echo "$t1 - $t0" | bc)
echo "nsmd $t" >>"$VM_RUN/times-c.txt"
result "time c nsmd: nsmctl release on server1 -> locks held on server2: $t s (host clock, takeover included)"

# Does this kernel's unlock_ip match anything (a fix of 2026 for an argument swap, see README)?
vm_must server2 "probe /proc/fs/nfsd/unlock_ip alone" >"$VM_RUN/c-unlock-ip.out" <<'EOF'
echo 198.51.100.50 >/proc/fs/nfsd/unlock_ip
sleep 1
none_locked /srv/svc1/export/f1 /srv/svc1/export/f2 && echo "unlock_ip dropped the locks" || echo "unlock_ip kept the locks"
end_grace
EOF
result "info: on kernel $KERNEL, $(cat "$VM_RUN/c-unlock-ip.out")"
vm_must client "release the locks and unmount" <<'EOF'
release_locks appc
umount -f /mnt/c || umount -l /mnt/c
EOF
