#!/usr/bin/python3
"""Deliberately broken statds that nsm-conformance must fail (tests/conformance.rs).

  fake_statd.py --mode lazy -p PORT -P DIR
      answers stat_succ to everything (also SM_MON from other hosts and for path-like names),
      stores nothing and never calls lockd.
  fake_statd.py --mode bad-cookie -p PORT -P DIR
      a careful statd (loopback-only SM_MON, name and callback checks, records in DIR/sm/ in
      the nfs-utils format, one callback per new state from a privileged loopback port) except
      that its lockd callbacks carry a wrong cookie.

Standard library only. Registers 100024/1 on UDP and TCP with the local rpcbind (PMAP v2).
"""

import argparse
import os
import signal
import socket
import struct
import sys
import threading

SM_PROG, NLM_PROG = 100024, 100021


def w(*words):
    return b"".join(struct.pack(">I", x & 0xFFFFFFFF) for x in words)


def xdr_string(b):
    return w(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


class Reader:
    def __init__(self, buf, at=0):
        self.buf, self.at = buf, at

    def u32(self):
        if self.at + 4 > len(self.buf):
            raise ValueError("short")
        (v,) = struct.unpack(">I", self.buf[self.at:self.at + 4])
        self.at += 4
        return v

    def opaque(self, fixed=None, limit=1024):
        n = fixed if fixed is not None else self.u32()
        if n > limit or self.at + n > len(self.buf):
            raise ValueError("bad opaque")
        v = self.buf[self.at:self.at + n]
        self.at += n + ((4 - n % 4) % 4 if fixed is None else 0)
        return v


def rpc_call(sock, to, prog, vers, proc, args, xid):
    sock.sendto(w(xid, 0, 2, prog, vers, proc, 0, 0, 0, 0) + args, to)
    sock.settimeout(2)
    try:
        while True:
            data, _ = sock.recvfrom(65536)
            if data[:4] == w(xid):
                return data
    except OSError:
        return None


def pmap(proc, prot, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r = rpc_call(s, ("127.0.0.1", 111), 100000, 2, proc, w(SM_PROG, 1, prot, port), 0x5E7 + proc + prot)
    s.close()
    return r


class Statd:
    def __init__(self, mode, port, base):
        self.mode, self.port, self.base = mode, port, base
        self.records = {}  # (mon_name lower, my_name, prog, vers, proc) -> (mon_name, cookie)
        self.seen = {}
        self.state = 3
        try:
            with open(os.path.join(base, "state"), "rb") as f:
                self.state = struct.unpack("=i", f.read(4))[0] | 1
        except (OSError, struct.error):
            pass
        self.lock = threading.Lock()
        self.xid = 0x7A000000 + os.getpid()
        if mode == "bad-cookie":
            self.load()

    def load(self):
        sm = os.path.join(self.base, "sm")
        for f in os.listdir(sm):
            if f.startswith("."):
                continue
            for line in open(os.path.join(sm, f), encoding="latin-1"):
                p = line.split()
                if len(p) >= 7:
                    key = (p[5].lower(), p[6], int(p[1], 16), int(p[2], 16), int(p[3], 16))
                    self.records[key] = (p[5].encode(), bytes.fromhex(p[4]))

    def save(self, name):
        path = os.path.join(self.base, "sm", name.decode())
        lines = [
            "0100007f %08x %08x %08x %s %s %s\n" % (k[2], k[3], k[4], v[1].hex(), v[0].decode(), k[1])
            for k, v in self.records.items()
            if k[0] == name.lower().decode()
        ]
        if lines:
            with open(path, "w") as f:
                f.writelines(lines)
        elif os.path.exists(path):
            os.unlink(path)

    def handle(self, msg, peer):
        r = Reader(msg)
        try:
            xid, mtype = r.u32(), r.u32()
            if mtype != 0:
                return None
            rpcvers, prog, vers, proc = r.u32(), r.u32(), r.u32(), r.u32()
            flavor = r.u32()
            r.opaque(limit=400)
            r.u32()
            r.opaque(limit=400)
        except ValueError:
            return None
        head = w(xid, 1)
        if rpcvers != 2:
            return head + w(1, 0, 2, 2)
        if flavor not in (0, 1):
            return head + w(1, 1, 1)
        ok = head + w(0, 0, 0)
        if prog != SM_PROG:
            return ok + w(1)
        if vers != 1:
            return ok + w(2, 1, 1)
        if proc > 6:
            return ok + w(3)
        local = peer[0] == "127.0.0.1"
        try:
            with self.lock:
                res = self.proc(proc, r, local)
        except ValueError:
            return ok + w(4)
        return ok + w(0) + res

    def proc(self, proc, r, local):
        careful = self.mode == "bad-cookie"
        if proc == 0:
            return b""
        if proc == 1:
            r.opaque()
            return w(0, self.state)
        if proc == 2:
            mon_name, my_name = r.opaque(), r.opaque()
            pvp = (r.u32(), r.u32(), r.u32())
            cookie = r.opaque(fixed=16)
            if not careful:
                return w(0, self.state)
            if (not local or b"/" in mon_name or mon_name.startswith(b".")
                    or pvp[0] != NLM_PROG or pvp[2] not in (16, 24)):
                return w(1, -1)
            self.records[(mon_name.lower().decode(), my_name.decode()) + pvp] = (mon_name, cookie)
            self.save(mon_name)
            return w(0, self.state)
        if proc == 3:
            mon_name, my_name = r.opaque(), r.opaque()
            pvp = (r.u32(), r.u32(), r.u32())
            if careful and local:
                self.records.pop((mon_name.lower().decode(), my_name.decode()) + pvp, None)
                self.save(mon_name)
            return w(self.state)
        if proc == 4:
            my_name = r.opaque()
            pvp = (r.u32(), r.u32(), r.u32())
            if careful and local:
                for k in [k for k in self.records if k[1] == my_name.decode() and k[2:] == pvp]:
                    name = self.records.pop(k)[0]
                    self.save(name)
            return w(self.state)
        if proc == 5:
            return b""
        # SM_NOTIFY
        mon_name = r.opaque()
        state = r.u32()
        if careful:
            for k, (name, cookie) in list(self.records.items()):
                if k[0] == mon_name.lower().decode() and self.seen.get(k) != state:
                    self.seen[k] = state
                    wrong = bytes([cookie[0] ^ 0xFF]) + cookie[1:]
                    threading.Thread(target=self.callback, args=(k, name, state, wrong)).start()
        return b""

    def callback(self, k, name, state, cookie):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for p in range(900, 600, -1):
            try:
                s.bind(("127.0.0.1", p))
                break
            except OSError:
                continue
        self.xid += 2
        a = w(k[2], k[3], 17, 0)
        r = rpc_call(s, ("127.0.0.1", 111), 100000, 2, 3, a, self.xid)
        if r is None or len(r) < 28:
            return
        (port,) = struct.unpack(">I", r[24:28])
        rpc_call(s, ("127.0.0.1", port), k[2], k[3], k[4], xdr_string(name) + w(state) + cookie, self.xid + 1)
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["lazy", "bad-cookie"], required=True)
    ap.add_argument("-p", type=int, required=True)
    ap.add_argument("-P", required=True)
    a, _ = ap.parse_known_args()
    statd = Statd(a.mode, a.p, a.P)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", a.p))
    u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    u6.bind(("::", a.p))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", a.p))
    t.listen(256)

    def bye(*_):
        pmap(2, 17, 0)
        pmap(2, 6, 0)
        os._exit(0)

    signal.signal(signal.SIGTERM, bye)

    def udp_loop(u):
        while True:
            msg, peer = u.recvfrom(65536)
            reply = statd.handle(msg, peer)
            if reply is not None:
                u.sendto(reply, peer)

    def conn(c, peer):
        c.settimeout(120)
        try:
            while True:
                rec = b""
                while True:
                    hdr = c.recv(4, socket.MSG_WAITALL)
                    if len(hdr) < 4:
                        return
                    (mark,) = struct.unpack(">I", hdr)
                    n = mark & 0x7FFFFFFF
                    if n > 65536:
                        return
                    body = b""
                    while len(body) < n:
                        chunk = c.recv(n - len(body))
                        if not chunk:
                            return
                        body += chunk
                    rec += body
                    if mark & 0x80000000:
                        break
                reply = statd.handle(rec, peer)
                if reply is not None:
                    c.sendall(w(0x80000000 | len(reply)) + reply)
        except OSError:
            return
        finally:
            c.close()

    def tcp_loop():
        while True:
            c, peer = t.accept()
            threading.Thread(target=conn, args=(c, peer), daemon=True).start()

    threading.Thread(target=udp_loop, args=(u,), daemon=True).start()
    threading.Thread(target=udp_loop, args=(u6,), daemon=True).start()
    threading.Thread(target=tcp_loop, daemon=True).start()
    pmap(2, 17, 0)
    pmap(2, 6, 0)
    pmap(1, 17, a.p)
    pmap(1, 6, a.p)
    print("fake statd (%s) serving on port %d" % (a.mode, a.p), flush=True)
    signal.pause()
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
