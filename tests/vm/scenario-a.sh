# Scenario a (sourced by run.sh): what the kernel's lockd sends to statd and what statd sends
# back, read with tshark from the captures scenario b took on each guest (one per statd), so
# the same kernel traffic is checked against rpc.statd and nsmd.

[ -n "${B_DONE:-}" ] || . "$here/scenario-b.sh"

# fields FILE FILTER FIELD...: one line per matching packet, fields separated by '|'.
fields() {
    local file=$1 filter=$2
    shift 2
    tshark -r "$file" -Y "$filter" -T fields -E separator='|' $(printf -- '-e %s ' "$@") 2>"$VM_RUN/tshark.err" \
        || vm_fail "tshark could not read $file with the filter '$filter': $(cat "$VM_RUN/tshark.err")"
}

for kind in rpc.statd nsmd; do
    for g in client server1; do
        pcap="$VM_RUN/results/$g/$kind.pcap"
        peer=198.51.100.1
        [ "$g" = client ] || peer=198.51.100.10
        what="a $kind $g"
        mons=$(fields "$pcap" 'rpc.program==100024 && rpc.procedure==2 && rpc.msgtyp==0' \
            ip.src ip.dst tcp.srcport rpc.auth.flavor stat.mon_id.name stat.my_id.hostname \
            stat.my_id.prog stat.my_id.vers stat.my_id.proc stat.priv)
        echo "$mons" >"$VM_RUN/a-$kind-$g-mon.txt"
        check "$what: lockd sent SM_MON" test -n "$mons"
        # Every SM_MON: TCP from a privileged port of 127.0.0.1 to 127.0.0.1, AUTH_NULL, the
        # peer's address as mon_name, this host's name as my_name, NLM 100021/3/16, 16-byte cookie.
        check "$what: every SM_MON is TCP, privileged, AUTH_NULL, mon_name $peer, my_name $g, 100021/3/16, 16-byte cookie" \
            awk -F'|' -v peer="$peer" -v me="$g" 'NF && !($1=="127.0.0.1" && $2=="127.0.0.1" && $3!="" && $3<1024 \
                && $4=="0,0" && $5==peer && $6==me && $7==100021 && $8==3 && $9==16 && length($10)==32) {bad=1; print "unexpected SM_MON: " $0 >"/dev/stderr"} END{exit bad}' \
            <<<"$mons"
        getports=$(fields "$pcap" 'rpc.program==100000 && rpc.procedure==3 && rpc.msgtyp==0 && portmap.prog==100024 && ip.dst==127.0.0.1' \
            tcp.srcport portmap.version portmap.proto rpc.auth.flavor rpc.auth.machinename)
        check "$what: lockd looked statd up with PMAP v2 GETPORT(100024, 1, TCP) over TCP, AUTH_SYS as $g" \
            grep -Eq "^[0-9]+\\|1\\|6\\|1,0\\|$g\$" <<<"$getports"
        replies=$(fields "$pcap" 'rpc.program==100024 && rpc.procedure==2 && rpc.msgtyp==1' stat.stat_res.res stat.stat_res.state)
        check "$what: every SM_MON answered stat_succ with an odd state" \
            awk -F'|' 'NF && !($1==0 && $2%2==1) {bad=1} END{exit bad}' <<<"$replies"
        unmons=$(fields "$pcap" 'rpc.program==100024 && rpc.procedure==3 && rpc.msgtyp==0' \
            tcp.srcport rpc.auth.flavor stat.mon_id.name stat.my_id.hostname stat.my_id.prog stat.my_id.vers stat.my_id.proc)
        echo "$unmons" >"$VM_RUN/a-$kind-$g-unmon.txt"
        if [ "$g" = client ]; then
            # The client's lockd forgets the server at umount: SM_UNMON with the same my_id.
            check "$what: umount made lockd send SM_UNMON (TCP, privileged, AUTH_NULL, same mon_id)" \
                awk -F'|' -v peer="$peer" -v me="$g" 'NF {n++; if (!($1<1024 && $2=="0,0" && $3==peer && $4==me && $5==100021 && $6==3 && $7==16)) bad=1} END{exit bad || !n}' \
                <<<"$unmons"
        fi
        check "$what: lockd never sent SM_UNMON_ALL, SM_STAT or SM_NOTIFY on loopback" \
            test -z "$(fields "$pcap" 'rpc.program==100024 && rpc.msgtyp==0 && ip.src==127.0.0.1 && tcp.srcport<1024 && (rpc.procedure==1 || rpc.procedure==4 || rpc.procedure==6)' frame.number)"
        check "$what: nsm_local_state is the statd's state number after its start" \
            test "$(cat "$VM_RUN/results/$g/nsm_local_state.$kind")" = "$(cat "$VM_RUN/results/$g/state.$kind")"
    done
    # The server's reboot notified the client; the client's statd called its lockd back.
    pcap="$VM_RUN/results/client/$kind.pcap"
    cookies=$(fields "$pcap" 'rpc.program==100024 && rpc.procedure==2 && rpc.msgtyp==0' stat.priv)
    notifies=$(fields "$pcap" 'rpc.program==100024 && rpc.procedure==6 && rpc.msgtyp==0' stat.state)
    callbacks=$(fields "$pcap" 'rpc.program==100021 && rpc.procedure==16 && rpc.msgtyp==0' \
        ip.src ip.dst udp.srcport rpc.programversion udp.payload)
    echo "$callbacks" >"$VM_RUN/a-$kind-client-callbacks.txt"
    check "a $kind: the client's statd called lockd back once per SM_NOTIFY, over UDP from a privileged loopback port, NLM v3" \
        awk -F'|' -v n="$(grep -c . <<<"$notifies")" 'NF {c++; if (!($1=="127.0.0.1" && $2=="127.0.0.1" && $3!="" && $3<1024 && $4 ~ /^3(,3)*$/)) bad=1} END{exit bad || c!=n}' \
        <<<"$callbacks"
    # The callback's argument: mon_name (the record's: the server's address), state, cookie.
    check "a $kind: each callback carries mon_name 198.51.100.1, a notified state and an SM_MON's exact cookie" \
        python3 - "$cookies" "$notifies" "$callbacks" <<'EOF'
import sys
cookies = set(sys.argv[1].split())
states = {int(s) for s in sys.argv[2].split()}
ok = True
for line in filter(None, sys.argv[3].splitlines()):
    body = bytes.fromhex(line.split("|")[4].replace(":", ""))
    # RPC call header: xid, CALL, rpcvers, prog, vers, proc, cred, verf (AUTH_NULL or AUTH_SYS)
    off = 24
    for _ in range(2):
        off += 8 + (int.from_bytes(body[off + 4:off + 8], "big") + 3) // 4 * 4
    n = int.from_bytes(body[off:off + 4], "big")
    name = body[off + 4:off + 4 + n].decode()
    off += 4 + (n + 3) // 4 * 4
    state = int.from_bytes(body[off:off + 4], "big")
    cookie = body[off + 4:off + 20].hex()
    print(f"callback: mon_name {name} state {state} cookie {cookie}", file=sys.stderr)
    ok &= name == "198.51.100.1" and state in states and cookie in cookies
sys.exit(0 if ok else 1)
EOF
done
