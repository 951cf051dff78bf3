"""manifest.py - which captured messages become which vector files.

Called by extract.py with a Ctx (cx).  Each entry picks a message by content
(program/version/procedure, xid for driver calls, addresses), and its reply
by xid + reversed endpoints.  Step names are those of capture.sh.
"""

import os

from extract import strace_messages, write_synth_pcap

DRIVER = 0x6E736D00  # driver xids are 0x6e736dNN ("nsm" + NN)


def run(cx):
    def cmd(step, contains=None):
        lines = cx.cmds(step)
        if contains:
            lines = [l for l in lines if contains in l]
        return " ; ".join(l.split(": ", 1)[1] for l in lines)

    def tool_pair(step, call_name, reply_name, call_src, reply_src, how, notes_call=(),
                  notes_reply=(), disk=(), n=0, **sel):
        c = cx.find_call(step, n=n, **sel)
        r = cx.find_reply(c)
        cx.emit(call_name, c, call_src, how, notes=notes_call)
        if reply_name:
            if r is None:
                raise SystemExit("%s: no reply to %s" % (step, c))
            cx.emit(reply_name, r, reply_src, "reply to: " + how, call=c, notes=notes_reply,
                    disk=disk)
        return c, r

    def drv_pair(step, nn, call_name, reply_name, reply_src="statd", notes_call=(),
                 notes_reply=(), disk=()):
        how = cmd(step, "--xid 0x%08x" % (DRIVER + nn))
        return tool_pair(step, call_name, reply_name, "driver", reply_src, how,
                         notes_call=notes_call, notes_reply=notes_reply, disk=disk,
                         xid=DRIVER + nn)

    # ---- 00: rpc.statd start-up -------------------------------------------
    s = "00-statd-start"
    start_how = cmd(s)
    tool_pair(s, "rpc.statd-pmap-getport-probe-call", "rpcbind-pmap-getport-unregistered-reply",
              "statd", "rpcbind", "start-up of " + start_how,
              notes_call=["rpc.statd's 'is a statd already running?' probe (nfs_probe_statd): "
                          "PMAP v2 GETPORT over UDP from an unprivileged port; a non-zero port "
                          "would be followed by a NULL ping"],
              notes_reply=["port 0: 100024 not registered yet"],
              prog=100000, vers=2, proc=3)

    # AF_LOCAL registration, from strace
    local = strace_messages(s, os.path.join(cx.out, "statd-a.strace"))
    synth = os.path.join(cx.out, "00-statd-aflocal.synth.pcap")
    write_synth_pcap(synth, local)
    calls = [m for m in local if m.hdr["mtype"] == 0]

    def lreply(c):
        for m in local:
            if m.hdr["mtype"] == 1 and m.hdr["xid"] == c.hdr["xid"] and m.conn == c.conn:
                return m
        raise SystemExit("no AF_LOCAL reply to %s" % c)

    def rpcb_args(m):
        from extract import Rd, call_args_offset
        r = Rd(m.data, call_args_offset(m.data))
        r.u32(), r.u32()
        return r.opaque().decode(), r.opaque().decode(), r.opaque().decode()

    unsets = [c for c in calls if c.hdr["proc"] == 2]
    sets = [c for c in calls if c.hdr["proc"] == 1]
    first_unset = unsets[0]
    cx.emit("rpc.statd-rpcb-unset-call", first_unset, "statd", "start-up of " + start_how,
            notes=["RPCBPROC_UNSET v3 of (100024, 1), empty netid = every transport, sent "
                   "while still root (r_owner \"0\" = geteuid()) before the listeners exist"],
            pcap=synth)
    cx.emit("rpcbind-rpcb-unset-reply", lreply(first_unset), "rpcbind",
            "reply to: start-up of " + start_how, call=first_unset, pcap=synth,
            notes=["TRUE, although this rpcbind had just started and nothing was "
                   "registered for 100024"])
    for c in sets:
        netid, addr, owner = rpcb_args(c)
        cx.emit("rpc.statd-rpcb-set-%s-call" % netid, c, "statd", "start-up of " + start_how,
                notes=["RPCBPROC_SET v3 for netid %s at %s, r_owner %r = statd's euid after "
                       "dropping privileges (uid of sm/)" % (netid, addr, owner)],
                pcap=synth)
        cx.emit("rpcbind-rpcb-set-%s-reply" % netid, lreply(c), "rpcbind",
                "reply to: start-up of " + start_how, call=c, pcap=synth)
    exit_unsets = [c for c in unsets[1:]]
    if exit_unsets:
        c = exit_unsets[0]
        cx.emit("rpc.statd-rpcb-unset-exit-call", c, "statd",
                "kill -TERM <rpc.statd pid> (end of capture.sh)", pcap=synth,
                notes=["at SIGTERM rpc.statd sent %d identical UNSETs (new xid each, r_owner "
                       "now \"%s\"); this is the first" % (len(exit_unsets), rpcb_args(c)[2])])
        cx.emit("rpcbind-rpcb-unset-exit-reply", lreply(c), "rpcbind",
                "reply to: kill -TERM <rpc.statd pid>", call=c, pcap=synth)

    # ---- 01..05: rpcinfo --------------------------------------------------
    s = "01-rpcinfo-null-udp"
    tool_pair(s, "rpcinfo-rpcb-getaddr-v4-udp-call", "rpcbind-rpcb-getaddr-v4-udp-reply",
              "rpcinfo", "rpcbind", cmd(s),
              notes_call=["rpcinfo -u looks the port up with RPCBPROC_GETADDR v4 (r_owner "
                          "\"libtirpc\", r_addr = the rpcbind address it is talking to)"],
              prog=100000, vers=4, proc=3)
    tool_pair(s, "rpcinfo-null-udp-call", "rpc.statd-null-udp-reply", "rpcinfo", "statd", cmd(s),
              prog=100024, vers=1, proc=0)

    s = "02-rpcinfo-null-tcp"
    tool_pair(s, "rpcinfo-rpcb-getaddr-v4-tcp-call", "rpcbind-rpcb-getaddr-v4-tcp-reply",
              "rpcinfo", "rpcbind", cmd(s), prog=100000, vers=4, proc=3)
    tool_pair(s, "rpcinfo-null-tcp-call", "rpc.statd-null-tcp-reply", "rpcinfo", "statd", cmd(s),
              prog=100024, vers=1, proc=0)

    s = "03-rpcinfo-null-v2"
    tool_pair(s, "rpcinfo-rpcb-getaddr-v4-vers2-call", "rpcbind-rpcb-getaddr-v4-vers2-reply",
              "rpcinfo", "rpcbind", cmd(s),
              notes_reply=["rpcbind answers the address of version 1 although version 2 was "
                           "asked for (it falls back to any registered version), so the client "
                           "learns of the mismatch from the server itself"],
              prog=100000, vers=4, proc=3)
    tool_pair(s, "rpcinfo-null-v2-call", "rpc.statd-prog-mismatch-reply", "rpcinfo", "statd",
              cmd(s), notes_reply=["PROG_MISMATCH low 1 high 1"],
              prog=100024, vers=2, proc=0)

    s = "04-rpcinfo-dump"
    tool_pair(s, "rpcinfo-pmap-dump-call", "rpcbind-pmap-dump-reply", "rpcinfo", "rpcbind",
              cmd(s), notes_call=["rpcinfo -p first asks GETADDR v4 for the portmapper "
                                  "itself over TCP (not kept), then PMAPPROC_DUMP v2 over TCP"],
              prog=100000, vers=2, proc=4)

    s = "05-rpcinfo-getaddr-udp6"
    tool_pair(s, "rpcinfo-rpcb-getaddr-v4-udp6-call", "rpcbind-rpcb-getaddr-v4-udp6-reply",
              "rpcinfo", "rpcbind", cmd(s), prog=100000, vers=4, proc=3)
    tool_pair(s, "rpcinfo-null-udp6-call", "rpc.statd-null-udp6-reply", "rpcinfo", "statd",
              cmd(s), prog=100024, vers=1, proc=0)

    # ---- 07: SM_STAT -------------------------------------------------------
    s = "07-sm-stat"
    drv_pair(s, 0x01, "driver-sm-stat-call", "rpc.statd-sm-stat-reply",
             notes_reply=["stat_succ, state = rpc.statd's own state (3)"])
    drv_pair(s, 0x02, "driver-sm-stat-unknown-call", "rpc.statd-sm-stat-fail-reply",
             notes_reply=["the name does not resolve: stat_fail, but state is still the "
                          "local state (3), not -1"])
    drv_pair(s, 0x03, "driver-sm-stat-authsys-call", "rpc.statd-sm-stat-authsys-reply",
             notes_call=["AUTH_SYS credentials (stamp 0x6e736d64, machine \"server1\", uid 0, "
                         "gid 0, gids [0]); rpc.statd does not look at credentials"],
             notes_reply=["the reply verifier is AUTH_NULL even for an AUTH_SYS call"])
    drv_pair(s, 0x04, "driver-sm-stat-tcp-call", "rpc.statd-sm-stat-tcp-reply")

    # ---- 08: SM_MON --------------------------------------------------------
    s = "08-sm-mon"
    drv_pair(s, 0x10, "driver-sm-mon-call", "rpc.statd-sm-mon-reply",
             notes_call=["like the kernel's SM_MON (my_name = nodename, 100021/3/16, 16-byte "
                         "cookie) but over UDP"],
             notes_reply=["stat_succ with the local state; the record was on disk before "
                          "the reply (mode 0600, owner statd)"],
             disk=[cx.disk("08-after-mon-udp", "sm/client1.example.test")])
    drv_pair(s, 0x11, "driver-sm-mon-tcp-call", "rpc.statd-sm-mon-tcp-reply",
             notes_call=["over TCP to 127.0.0.1, as current kernels send it"],
             disk=[cx.disk("08-after-mon-tcp", "sm/localhost")])
    drv_pair(s, 0x12, "driver-sm-mon-nonlocal-call", "rpc.statd-sm-mon-nonlocal-reply",
             notes_call=["same mon as driver-sm-mon-call but sent from 198.51.100.2 (host B)"],
             notes_reply=["refused: caller is not 127.0.0.1 -> stat_fail, state -1 "
                          "(0xffffffff)"])

    # ---- 11: SM_NOTIFY -> lockd callback ----------------------------------
    s = "11-callback"
    tool_pair(s, "driver-pmap-set-call", "rpcbind-pmap-set-reply", "driver", "rpcbind",
              cmd(s, "fake-lockd"),
              notes_call=["the fake lockd registers (100021, 3, UDP, 4045) with PMAPPROC_SET "
                          "v2 over UDP from 127.0.0.1 and a reserved port (as a root daemon "
                          "would; rpcbind 1.2.6 also accepted it from an unprivileged port in "
                          "a manual check)"],
              xid=DRIVER + 0x20)
    drv_pair(s, 0x21, "driver-sm-notify-call", "rpc.statd-sm-notify-reply",
             notes_call=["client1 (198.51.100.2) announces state 3 to host A's rpc.statd"],
             notes_reply=["void; the callback happens afterwards"])
    how_cb = ("rpc.statd, after driver-sm-notify-call matched the SM_MON record of "
              "driver-sm-mon-call")
    tool_pair(s, "rpc.statd-pmap-getport-nlm-call", "rpcbind-pmap-getport-nlm-reply", "statd",
              "rpcbind", how_cb,
              notes_call=["from rpc.statd's callback socket: 127.0.0.1, reserved port "
                          "(bindresvport); no port caching"],
              prog=100000, vers=2, proc=3, src="127.0.0.1")
    c, r = tool_pair(s, "rpc.statd-nlm-sm-notify-call", None, "statd", None, how_cb,
                     notes_call=["NLM proc 16 with struct status: mon_name exactly as given in "
                                 "SM_MON, state from the SM_NOTIFY, priv = the SM_MON cookie; "
                                 "AUTH_NULL; from 127.0.0.1 and a reserved port, as the kernel "
                                 "requires"],
                     prog=100021, vers=3, proc=16)
    cx.emit("fake-lockd-nlm-sm-notify-reply", r, "fakelockd", "reply to: " + how_cb, call=c)

    # ---- 09: SM_UNMON, SM_UNMON_ALL -----------------------------------------
    s = "09-sm-unmon"
    drv_pair(s, 0x30, "driver-sm-unmon-call", "rpc.statd-sm-unmon-reply",
             notes_reply=["sm_stat with the local state; sm/client1.example.test was "
                          "unlinked (its only line was removed)"])
    drv_pair(s, 0x31, "driver-sm-unmon-all-call", "rpc.statd-sm-unmon-all-reply",
             notes_reply=["removed the remaining record (sm/localhost, my_name server1); "
                          "sm/ is empty afterwards"])

    # ---- 12: errors ---------------------------------------------------------
    s = "12-errors"
    drv_pair(s, 0x40, "driver-proc7-call", "rpc.statd-proc-unavail-reply",
             notes_reply=["PROC_UNAVAIL for procedure 7"])
    drv_pair(s, 0x41, "driver-sm-stat-long-call", "rpc.statd-garbage-args-reply",
             notes_call=["mon_name of 2000 bytes (> SM_MAXSTRLEN 1024)"],
             notes_reply=["GARBAGE_ARGS"])
    stale = ("rpc.statd 2.6.2 (libtirpc svc_dg) decodes UDP arguments from its whole "
             "receive buffer, not just the datagram: the missing bytes come from the "
             "previous request, which was an SM_STAT for %s; the answer is the answer to "
             "that name, never GARBAGE_ARGS")
    drv_pair(s, 0x43, "driver-sm-stat-truncated-call", "rpc.statd-sm-stat-truncated-reply",
             notes_call=["SM_STAT whose argument stops after the length word (9) of "
                         "\"localhost\"; the preceding call (xid 0x6e736d42) was a full "
                         "SM_STAT for \"localhost\""],
             notes_reply=[stale % "\"localhost\" -> stat_succ, 3"])
    drv_pair(s, 0x45, "driver-sm-stat-truncated-2-call", "rpc.statd-sm-stat-truncated-2-reply",
             notes_call=["same bytes as driver-sm-stat-truncated-call (new xid); the "
                         "preceding call (xid 0x6e736d44) was an SM_STAT for "
                         "\"nosuchhost.example.test\""],
             notes_reply=[stale % "\"nosuchhost.example.test\" -> stat_fail, 3"])
    drv_pair(s, 0x46, "driver-sm-stat-noargs-call", "rpc.statd-sm-stat-noargs-reply",
             notes_call=["SM_STAT with no argument bytes at all"],
             notes_reply=[stale % "\"nosuchhost.example.test\" (two calls back) -> stat_fail, 3"])
    drv_pair(s, 0x47, "driver-sm-stat-truncated-tcp-call", "rpc.statd-sm-stat-truncated-tcp-reply",
             notes_call=["the truncated SM_STAT of driver-sm-stat-truncated-call, over TCP"],
             notes_reply=["over TCP the record bounds the decode: GARBAGE_ARGS"])
    drv_pair(s, 0x48, "driver-prog100025-call", "rpc.statd-prog-unavail-reply",
             notes_reply=["PROG_UNAVAIL for program 100025 on rpc.statd's port"])
    drv_pair(s, 0x49, "driver-auth-dh-call", "rpc.statd-auth-error-reply",
             notes_call=["credential flavor 3 (AUTH_DH) with an empty body"],
             notes_reply=["MSG_DENIED / AUTH_ERROR / auth_stat 7 (AUTH_FAILED)"])
    c = cx.find_call(s, xid=DRIVER + 0x4A)
    cx.emit("driver-rpcvers3-call", c, "driver", cmd(s, "--xid 0x%08x" % (DRIVER + 0x4A)),
            notes=["RPC version 3: rpc.statd (libtirpc) sends NO reply at all (RFC 5531 asks "
                   "for MSG_DENIED / RPC_MISMATCH); rpcbind behaves the same"])
    drv_pair(s, 0x4B, "driver-sm-simu-crash-call", "rpc.statd-sm-simu-crash-reply",
             notes_call=["SM_SIMU_CRASH from 127.0.0.1 but an unprivileged port"],
             notes_reply=["void success; rpc.statd logged and ignored it (needs port < 1024)"])

    # ---- 10: sm-notify -------------------------------------------------------
    s = "10-prep"
    drv_pair(s, 0x51, "driver-sm-mon-alias-call", "rpc.statd-sm-mon-alias-reply",
             notes_call=["mon_name \"client1\" (an alias) with an FQDN my_name, after a record "
                         "for client1.example.test / server1 already exists"],
             notes_reply=["stat_succ; on disk a second line was appended to the file named by "
                          "the canonical name (rewritten by atomic replace, now mode 0640); in "
                          "memory rpc.statd logged 'new cookie' and updated the first record, "
                          "because server1 and server1.example.test match by DNS"],
             disk=[cx.disk("10-before-sm-notify", "sm/client1.example.test")])
    s = "10-sm-notify"
    how = cmd(s)
    state = cx.disk("10-after-sm-notify", "state")
    tool_pair(s, "sm-notify-pmap-getport-call", "rpcbind-pmap-getport-statd-reply", "smnotify",
              "rpcbind-b", how,
              notes_call=["to the IPv4 peer client1.example.test (198.51.100.2:111), from "
                          "sm-notify's single dual-stack UDP socket (reserved port)"],
              notes_reply=["host B's rpcbind: rpc.statd is on UDP port 32765"],
              prog=100000, vers=2, proc=3)
    tool_pair(s, "sm-notify-rpcb-getaddr-v3-call", "rpcbind-rpcb-getaddr-v3-reply", "smnotify",
              "rpcbind", how,
              notes_call=["to the IPv6 peer localhost6 ([::1]:111): RPCBPROC_GETADDR v3, "
                          "r_netid \"udp6\", r_addr = universal address of [::1]:111, "
                          "r_owner \"\""],
              prog=100000, vers=3, proc=3)
    notifies = [m for m in cx.step(s) if m.hdr.get("mtype") == 0 and m.hdr.get("prog") == 100024]

    def arg_name(m):
        from extract import Rd, call_args_offset
        return Rd(m.data, call_args_offset(m.data)).opaque().decode()

    v4 = [m for m in notifies if m.dst == "198.51.100.2"]
    v6 = [m for m in notifies if m.dst == "::1"]
    short = [m for m in v4 if arg_name(m) == "server1"]
    fqdn = [m for m in v4 if arg_name(m) == "server1.example.test"]
    state_note = ("state %d = the state file after sm-notify bumped it (rpc.statd had "
                  "created it with 3; 4-byte native-endian int, owner root)"
                  % int.from_bytes(state[1], "little"))
    jobs = [
        ("sm-notify-notify-call", "rpc.statd-notify-reply", short[0], "statd-b",
         ["SM_NOTIFY (stat_chge) for the record client1.example.test / server1: mon_name = the "
          "record's my_name; " + state_note], [state]),
        ("sm-notify-notify-fqdn-call", "rpc.statd-notify-fqdn-reply", fqdn[0], "statd-b",
         ["for the record client1 / server1.example.test: first the FQDN my_name ..."], []),
        ("sm-notify-notify-fqdn-short-call", "rpc.statd-notify-fqdn-short-reply", short[1],
         "statd-b", ["... then, once acknowledged, again with the name cut at the first dot"],
         []),
        ("sm-notify-notify-udp6-call", "rpc.statd-notify-udp6-reply", v6[0], "statd",
         ["to the IPv6 peer localhost6 ([::1]:32765, host A's own rpc.statd)"], []),
    ]
    for cname, rname, c, rsrc, notes, disk in jobs:
        cx.emit(cname, c, "smnotify", how, notes=notes, disk=disk)
        cx.emit(rname, cx.find_reply(c), rsrc, "reply to: " + how, call=c,
                notes=["void"])
    c, r = tool_pair(s, "rpc.statd-nlm-sm-notify-by-address-call", None, "statd", None,
                     "rpc.statd, after sm-notify-notify-udp6-call", prog=100021, vers=3, proc=16,
                     notes_call=["host A's rpc.statd matched the notify for \"server1\" from "
                                 "::1 to its record localhost6 by the SENDER ADDRESS (::1 "
                                 "reverse-resolves to localhost6), and called lockd back with "
                                 "that record's mon_name and cookie"])
