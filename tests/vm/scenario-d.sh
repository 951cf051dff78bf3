# Scenario d (sourced by run.sh): active/active. svc1 (198.51.100.50, disk vda) and svc2
# (198.51.100.51, disk vdb) both run on server1; the client holds a lock through each. Moving
# svc2 to server2 must drop only svc2's lock on server1 and have only that one reclaimed (on
# server2); svc1's lock stays held on server1 and is never reclaimed.

setup_instances
for g in server1 server2 client; do
    vm_must "$g" "capture for scenario d" <<<'stop_capture; start_capture d'
done
# Wherever c left the services, stop them; server1's lockd forgets the client (nfsd restart),
# so its first lock through either service is an SM_MON again.
for g in server1 server2; do
    vm_must "$g" "stop the services running here" <<'EOF'
for s in svc1:198.51.100.50 svc2:198.51.100.51; do
    if mountpoint -q /srv/${s%%:*}; then
        /host/bin/nsmctl release ${s%%:*}
        svc_down ${s%%:*} ${s#*:}
    fi
done
EOF
done
vm_must server1 "svc1 and svc2 up on server1" <<'EOF'
stop_nfsd
svc_up svc1 vda 198.51.100.50 2
svc_up svc2 vdb 198.51.100.51 3
start_nfsd
end_grace
/host/bin/nsmctl takeover svc1
/host/bin/nsmctl takeover svc2
EOF
vm_must client "mount both services, then lock f1 through svc1 and g1 through svc2" <<'EOF'
dmesg -c >>$R/dmesg.txt
mkdir -p /mnt/d1 /mnt/d2
mount -t nfs -o vers=3,proto=tcp,hard 198.51.100.50:/srv/svc1/export /mnt/d1
mount -t nfs -o vers=3,proto=tcp,hard 198.51.100.51:/srv/svc2/export /mnt/d2
hold_locks appd1 /mnt/d1/f1
hold_locks appd2 /mnt/d2/g1
EOF
vm_must server1 "server1 holds both locks; both services monitor the client" >"$VM_RUN/d-before.out" <<'EOF'
wait_for 30 "the client's locks on server1" all_locked /srv/svc1/export/f1 /srv/svc2/export/g1
echo "SVC1 SM: $(ls /srv/svc1/statd/sm | tr '\n' ' ')"
echo "SVC2 SM: $(ls /srv/svc2/statd/sm | tr '\n' ' ')"
/host/bin/nsmctl status | awk '$1=="svc1"{print "SVC1 STATE", $4}'
EOF
cat "$VM_RUN/d-before.out" >&2
check "d: the client's SM_MON is recorded in svc1's and svc2's sm/ (it mounted both)" \
    sh -c "grep -q '^SVC1 SM: .*198\.51\.100\.10' '$VM_RUN/d-before.out' && grep -q '^SVC2 SM: .*198\.51\.100\.10' '$VM_RUN/d-before.out'"

t0=$(date +%s.%N)
vm_must server1 "release svc2 on server1" >"$VM_RUN/d-release.out" <<'EOF'
/host/bin/nsmctl release svc2
none_locked /srv/svc2/export/g1 && echo "SVC2 LOCK DROPPED"
all_locked /srv/svc1/export/f1 && echo "SVC1 LOCK KEPT"
svc_down svc2 198.51.100.51
EOF
cat "$VM_RUN/d-release.out" >&2
check "d: releasing svc2 dropped svc2's lock on server1" grep -q '^SVC2 LOCK DROPPED' "$VM_RUN/d-release.out"
check "d: releasing svc2 kept svc1's lock on server1" grep -q '^SVC1 LOCK KEPT' "$VM_RUN/d-release.out"
vm_run -t 200 server2 "svc2 up on server2, nfsd in grace, takeover, the client's reclaim" \
    >"$VM_RUN/d-takeover.out" <<'EOF' || true
stop_nfsd
svc_up svc2 vdb 198.51.100.51 3
start_nfsd
/host/bin/nsmctl takeover svc2
deadline=$(($(date +%s) + 120))
until all_locked /srv/svc2/export/g1 || [ $(date +%s) -ge $deadline ]; do sleep 0.1; done
all_locked /srv/svc2/export/g1 && echo RECLAIMED || echo "NOT RECLAIMED within 120 s of the takeover"
conflicts /srv/svc2/export/g1 && echo "CONFLICT g1" || echo "NO CONFLICT g1"
echo "SVC2 SM: $(ls /srv/svc2/statd/sm | tr '\n' ' ')"
end_grace
EOF
t1=$(date +%s.%N)
cat "$VM_RUN/d-takeover.out" >&2
vm_must server1 "svc1 untouched on server1" >"$VM_RUN/d-after.out" <<'EOF'
all_locked /srv/svc1/export/f1 && echo "SVC1 LOCK KEPT"
/host/bin/nsmctl status | awk '$1=="svc1"{print "SVC1 STATE", $4}'
EOF
vm_must client "collect the client's view, release, unmount" >"$VM_RUN/d-client.out" <<'EOF'
dmesg -c | tee -a $R/dmesg.txt | grep -E 'lockd|NFS|nfs|statd' || true
kill -0 $(cat $R/appd1.locked) && kill -0 $(cat $R/appd2.locked) && echo "APPS ALIVE"
release_locks appd1
release_locks appd2
umount /mnt/d1
umount /mnt/d2
stop_capture
EOF
cat "$VM_RUN/d-client.out" >&2
check "d: server2 holds svc2's lock again" grep -q '^RECLAIMED' "$VM_RUN/d-takeover.out"
check "d: a second process on server2 conflicts with it" grep -q '^CONFLICT g1' "$VM_RUN/d-takeover.out"
check "d: svc1's lock stayed on server1 throughout" grep -q '^SVC1 LOCK KEPT' "$VM_RUN/d-after.out"
check "d: svc1's state did not change (its clients were not notified)" \
    test "$(grep '^SVC1 STATE' "$VM_RUN/d-before.out")" = "$(grep '^SVC1 STATE' "$VM_RUN/d-after.out")"
check "d: the client's kernel reclaimed without error" \
    sh -c "! grep -q 'failed to reclaim' '$VM_RUN/d-client.out'"
reclaims=$(tshark -r "$VM_RUN/results/client/d.pcap" -Y 'nlm.reclaim==1 && rpc.msgtyp==0' -T fields -e ip.dst 2>/dev/null | sort -u)
echo "$reclaims" >"$VM_RUN/d-reclaims.txt"
check "d: the client reclaimed nothing through svc1's address" \
    test -z "$(grep -x 198.51.100.50 <<<"$reclaims" || true)"
t=$(echo "$t1 - $t0" | bc)
echo "nsmd $t" >"$VM_RUN/times-d.txt"
result "time d nsmd: nsmctl release svc2 on server1 -> its lock held on server2: $t s (host clock, takeover included)"
