#!/usr/bin/env python3
"""rpcdrv.py - a tiny ONC RPC driver used by proto/capture.sh.

It is only a *driver*: it builds the calls that no Debian tool sends on
demand (SM_STAT, SM_MON, ...), so that the *replies* of the real Debian
rpc.statd / rpcbind can be captured.  Vectors made from its calls say
"source: capture driver (proto/capture/rpcdrv.py)".  It also plays a fake
lockd (NLM 100021 v3 over UDP) that answers rpc.statd's proc-16 callback.

Standard library only (socket + struct).  XIDs are fixed per call (given on
the command line) so re-running the capture produces the same driver bytes.

Subcommands (see --help of each):
  call        send one RPC call (any prog/vers/proc, args as hex or built
              from --sm-* helpers), print the reply
  fake-lockd  bind UDP 127.0.0.1:PORT, register (100021, 3, udp, PORT) with
              rpcbind by PMAPPROC_SET over UDP from a reserved port, answer
              every call with ACCEPTED/SUCCESS and a void body
"""

import argparse
import os
import signal
import socket
import struct
import sys
import time

AUTH_NULL = 0
AUTH_SYS = 1


# ---------------------------------------------------------------- XDR ----
def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def i32(v):
    return struct.pack(">i", v)


def pad(b):
    return b + b"\0" * ((4 - len(b) % 4) % 4)


def xstring(s):
    if isinstance(s, str):
        s = s.encode()
    return u32(len(s)) + pad(s)


def opaque_auth(flavor, body=b""):
    return u32(flavor) + u32(len(body)) + pad(body)


def authsys(stamp, machine, uid, gid, gids):
    body = u32(stamp) + xstring(machine) + u32(uid) + u32(gid) + u32(len(gids))
    for g in gids:
        body += u32(g)
    return body


def rpc_call(xid, prog, vers, proc, args=b"", cred=None, verf=None, rpcvers=2):
    cred = cred if cred is not None else opaque_auth(AUTH_NULL)
    verf = verf if verf is not None else opaque_auth(AUTH_NULL)
    return u32(xid) + u32(0) + u32(rpcvers) + u32(prog) + u32(vers) + u32(proc) + cred + verf + args


def rpc_reply_success(xid, results=b""):
    # MSG_ACCEPTED, AUTH_NULL verifier, SUCCESS
    return u32(xid) + u32(1) + u32(0) + opaque_auth(AUTH_NULL) + u32(0) + results


def record(msg):
    return u32(0x80000000 | len(msg)) + msg


# ------------------------------------------------------------- decode ----
class Rd:
    def __init__(self, b):
        self.b, self.o = b, 0

    def u32(self):
        if self.o + 4 > len(self.b):
            raise ValueError("short")
        v = struct.unpack_from(">I", self.b, self.o)[0]
        self.o += 4
        return v

    def i32(self):
        v = self.u32()
        return v - (1 << 32) if v & 0x80000000 else v

    def opaque(self, n=None):
        if n is None:
            n = self.u32()
        if self.o + n > len(self.b):
            raise ValueError("short")
        v = self.b[self.o:self.o + n]
        self.o += n + (4 - n % 4) % 4
        return v


def describe_reply(b):
    """Short human description of a reply, for the capture log only."""
    try:
        r = Rd(b)
        xid, mtype = r.u32(), r.u32()
        if mtype != 1:
            return "not a reply"
        rstat = r.u32()
        if rstat == 1:
            rj = r.u32()
            return "xid=%#x MSG_DENIED reject_stat=%d rest=%s" % (xid, rj, b[r.o:].hex())
        r.u32()
        r.opaque()
        astat = r.u32()
        return "xid=%#x MSG_ACCEPTED accept_stat=%d results=%s" % (xid, astat, b[r.o:].hex())
    except ValueError:
        return "undecodable: " + b.hex()


# ---------------------------------------------------------- transport ----
def bind_reserved(sock, addr):
    """bindresvport-like: first free port in 600..1023 (we are root)."""
    for port in range(1023, 599, -1):
        try:
            sock.bind((addr, port))
            return port
        except OSError:
            continue
    raise OSError("no reserved port free")


def sock_for(dst, tcp):
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    return socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)


def exchange(msg, dst, port, tcp=False, src=None, sport=0, reserved=False, timeout=3.0,
             expect_reply=True):
    s = sock_for(dst, tcp)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reserved:
        bind_reserved(s, src or ("::" if s.family == socket.AF_INET6 else "0.0.0.0"))
    elif src or sport:
        s.bind((src or ("::" if s.family == socket.AF_INET6 else "0.0.0.0"), sport))
    s.settimeout(timeout)
    try:
        if tcp:
            s.connect((dst, port))
            s.sendall(record(msg))
            if not expect_reply:
                time.sleep(0.5)
                return None
            hdr = b""
            while len(hdr) < 4:
                c = s.recv(4 - len(hdr))
                if not c:
                    return None
                hdr += c
            n = struct.unpack(">I", hdr)[0] & 0x7FFFFFFF
            body = b""
            while len(body) < n:
                c = s.recv(n - len(body))
                if not c:
                    break
                body += c
            return body
        s.sendto(msg, (dst, port))
        if not expect_reply:
            return None
        data, _ = s.recvfrom(65536)
        return data
    except socket.timeout:
        return None
    finally:
        s.close()


# ------------------------------------------------------------ NSM args ----
def sm_args(ns):
    kind = ns.sm
    if kind is None:
        return bytes.fromhex(ns.args_hex or "")
    if kind == "stat":           # sm_name
        return xstring(ns.mon_name)
    if kind == "mon":            # mon
        return (xstring(ns.mon_name) + xstring(ns.my_name) + i32(ns.my_prog) + i32(ns.my_vers)
                + i32(ns.my_proc) + bytes.fromhex(ns.priv))
    if kind == "unmon":          # mon_id
        return (xstring(ns.mon_name) + xstring(ns.my_name) + i32(ns.my_prog) + i32(ns.my_vers)
                + i32(ns.my_proc))
    if kind == "unmon-all":      # my_id
        return xstring(ns.my_name) + i32(ns.my_prog) + i32(ns.my_vers) + i32(ns.my_proc)
    if kind == "notify":         # stat_chge
        return xstring(ns.mon_name) + i32(ns.state)
    if kind == "pmap":           # mapping
        return u32(ns.map_prog) + u32(ns.map_vers) + u32(ns.map_prot) + u32(ns.map_port)
    raise SystemExit("unknown --sm kind " + kind)


def cmd_call(ns):
    args = sm_args(ns)
    if ns.truncate is not None:
        args = args[:ns.truncate]
    args += bytes.fromhex(ns.append_hex or "")
    cred = None
    if ns.auth_sys:
        cred = opaque_auth(AUTH_SYS, authsys(ns.stamp, ns.machine, ns.uid, ns.gid, ns.gids))
    elif ns.cred_flavor is not None:
        cred = opaque_auth(ns.cred_flavor, bytes.fromhex(ns.cred_body_hex or ""))
    msg = rpc_call(ns.xid, ns.prog, ns.vers, ns.proc, args, cred=cred, rpcvers=ns.rpcvers)
    rep = exchange(msg, ns.dst, ns.port, tcp=ns.tcp, src=ns.src, sport=ns.sport,
                   reserved=ns.reserved, timeout=ns.timeout, expect_reply=not ns.no_reply)
    print("call  %s" % msg.hex())
    if rep is None:
        print("reply none")
        return 0 if ns.no_reply else 2
    print("reply %s" % rep.hex())
    print("      %s" % describe_reply(rep))
    return 0


# ----------------------------------------------------------- fake lockd ----
def cmd_fake_lockd(ns):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", ns.port))
    if ns.register:
        args = u32(100021) + u32(ns.vers) + u32(17) + u32(ns.port)
        msg = rpc_call(ns.xid, 100000, 2, 1, args)       # PMAPPROC_SET
        rep = exchange(msg, "127.0.0.1", 111, src="127.0.0.1", reserved=True)
        print("pmap-set call  %s" % msg.hex(), flush=True)
        print("pmap-set reply %s" % (rep.hex() if rep else "none"), flush=True)
        if rep is None or rep[-4:] != u32(1):
            print("registration failed", flush=True)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("fake lockd ready on 127.0.0.1:%d" % ns.port, flush=True)
    while True:
        data, peer = s.recvfrom(65536)
        try:
            r = Rd(data)
            xid, mtype = r.u32(), r.u32()
            if mtype != 0:
                continue
            rpcvers, prog, vers, proc = r.u32(), r.u32(), r.u32(), r.u32()
        except ValueError:
            continue
        print("got call from %s:%d xid=%#x prog=%d vers=%d proc=%d bytes=%s"
              % (peer[0], peer[1], xid, prog, vers, proc, data.hex()), flush=True)
        # Answer like Linux lockd answers NLMPROC_NSM_NOTIFY: accepted, void.
        s.sendto(rpc_reply_success(xid), peer)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("call")
    c.add_argument("--dst", default="127.0.0.1")
    c.add_argument("--port", type=int, default=32765)
    c.add_argument("--src")
    c.add_argument("--sport", type=int, default=0)
    c.add_argument("--reserved", action="store_true", help="bind a port in 600..1023")
    c.add_argument("--tcp", action="store_true")
    c.add_argument("--timeout", type=float, default=3.0)
    c.add_argument("--no-reply", action="store_true")
    c.add_argument("--xid", type=lambda s: int(s, 0), required=True)
    c.add_argument("--rpcvers", type=int, default=2)
    c.add_argument("--prog", type=int, default=100024)
    c.add_argument("--vers", type=int, default=1)
    c.add_argument("--proc", type=int, required=True)
    c.add_argument("--sm", choices=["stat", "mon", "unmon", "unmon-all", "notify", "pmap"])
    c.add_argument("--args-hex")
    c.add_argument("--append-hex")
    c.add_argument("--truncate", type=int, help="keep only the first N argument bytes")
    c.add_argument("--mon-name")
    c.add_argument("--my-name")
    c.add_argument("--my-prog", type=int, default=100021)
    c.add_argument("--my-vers", type=int, default=3)
    c.add_argument("--my-proc", type=int, default=16)
    c.add_argument("--priv", default="000102030405060708090a0b0c0d0e0f")
    c.add_argument("--state", type=int, default=0)
    c.add_argument("--map-prog", type=int, default=0)
    c.add_argument("--map-vers", type=int, default=0)
    c.add_argument("--map-prot", type=int, default=17)
    c.add_argument("--map-port", type=int, default=0)
    c.add_argument("--auth-sys", action="store_true")
    c.add_argument("--stamp", type=lambda s: int(s, 0), default=0x6e736d64)
    c.add_argument("--machine", default="server1")
    c.add_argument("--uid", type=int, default=0)
    c.add_argument("--gid", type=int, default=0)
    c.add_argument("--gids", type=lambda s: [int(x) for x in s.split(",") if x], default=[0])
    c.add_argument("--cred-flavor", type=int)
    c.add_argument("--cred-body-hex")
    c.set_defaults(func=cmd_call)

    f = sub.add_parser("fake-lockd")
    f.add_argument("--port", type=int, default=4045)
    f.add_argument("--vers", type=int, default=3)
    f.add_argument("--register", action="store_true")
    f.add_argument("--xid", type=lambda s: int(s, 0), default=0x6e736d00)
    f.set_defaults(func=cmd_fake_lockd)

    ns = ap.parse_args()
    if ns.cmd == "call" and ns.sm in ("stat", "mon", "unmon", "notify") and ns.mon_name is None:
        ap.error("--mon-name is required")
    if ns.cmd == "call" and ns.sm in ("mon", "unmon", "unmon-all") and ns.my_name is None:
        ap.error("--my-name is required")
    sys.exit(ns.func(ns))


if __name__ == "__main__":
    main()
