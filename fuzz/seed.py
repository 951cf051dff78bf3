#!/usr/bin/env python3
"""seed.py - (re)create the seed corpora fuzz/corpus/<target>/ for nsmd's fuzz targets.

Seeds come from two places:
  * the captured hex vectors proto/vectors/*.hex (format: proto/README.md: '#' comment lines,
    then hex bytes, whitespace ignored; a TCP message carries its record marks in a
    '# record-mark: 8000002c ...' comment), and
  * a few hand-built valid messages (below), so every target has seeds even without vectors.

Each target's input layout is described at the top of fuzz/fuzz_targets/<target>.rs; this script
writes exactly those layouts (e.g. nsm_args wants a type-selector byte before the XDR).

Usage: fuzz/seed.py [--vectors DIR] [--out DIR]     (defaults: proto/vectors, fuzz/corpus)
Generated files are named <source>.bin; the corpus directories are emptied first, so the
result depends only on the vectors and this script. Deterministic; no randomness.
"""

import argparse
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGETS = ["nsm_args", "rpcbind_args", "rpc_call", "record_reassembly", "dispatch"]
MAX_PER_TARGET = 60

SM_PROG, NLM_PROG, PMAP_PROG = 100024, 100021, 100000
# nsm_args selector byte per NSM type (fuzz_targets/nsm_args.rs)
SEL_MON, SEL_MON_ID, SEL_MY_ID, SEL_SM_NAME, SEL_STAT_CHGE, SEL_STATUS, SEL_SM_STAT_RES, SEL_SM_STAT = range(8)
# rpcbind_args selector byte (fuzz_targets/rpcbind_args.rs)
SEL_MAPPING, SEL_RPCB, SEL_PMAPLIST, SEL_UADDR = range(4)

# --------------------------------------------------------------- XDR ----


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def opaque(b):
    return u32(len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)


def auth_none():
    return u32(0) + opaque(b"")


def auth_sys(machine=b"client-0042", uid=0, gid=0, gids=()):
    body = u32(0x5EED) + opaque(machine) + u32(uid) + u32(gid) + u32(len(gids))
    body += b"".join(u32(g) for g in gids)
    return u32(1) + opaque(body)


def call(xid, prog, vers, proc, args=b"", cred=None, verf=None):
    return (u32(xid) + u32(0) + u32(2) + u32(prog) + u32(vers) + u32(proc)
            + (cred or auth_none()) + (verf or auth_none()) + args)


def accepted(xid, stat=0, result=b""):
    return u32(xid) + u32(1) + u32(0) + auth_none() + u32(stat) + result


def denied(xid, rest):
    return u32(xid) + u32(1) + u32(1) + rest


PRIV = bytes(range(16))


def my_id(name=b"nfs-server-a", prog=NLM_PROG, vers=3, proc=16):
    return opaque(name) + u32(prog) + u32(vers) + u32(proc)


def mon_id(mon_name=b"client-0042.example.test", **kw):
    return opaque(mon_name) + my_id(**kw)


def mon(mon_name=b"client-0042.example.test", priv=PRIV, **kw):
    return mon_id(mon_name, **kw) + priv


def stat_chge(name=b"client-0042.example.test", state=3):
    return opaque(name) + u32(state)


def status(name=b"client-0042.example.test", state=5, priv=PRIV):
    return opaque(name) + u32(state) + priv


def mapping(prog=SM_PROG, vers=1, prot=17, port=0):
    return u32(prog) + u32(vers) + u32(prot) + u32(port)


def rpcb(prog=SM_PROG, vers=1, netid=b"udp", addr=b"0.0.0.0.6.126", owner=b"superuser"):
    return u32(prog) + u32(vers) + opaque(netid) + opaque(addr) + opaque(owner)


def pmaplist(entries):
    return b"".join(u32(1) + mapping(*e) for e in entries) + u32(0)


def record(msg, sizes=None):
    """msg with record marks: one fragment, or fragments of the given sizes (the last one
    takes the rest)."""
    sizes = list(sizes or [])
    out, rest = b"", msg
    for s in sizes:
        out += u32(min(s, len(rest))) + rest[:s]
        rest = rest[s:]
    return out + u32(0x80000000 | len(rest)) + rest


def reassembly(stream, limits=0x3F, chunks=()):
    """record_reassembly input: limits byte (default: cap 64 KiB, 8 fragments), chunk sizes."""
    assert len(chunks) <= 8 and all(0 <= c < 256 for c in chunks)
    return bytes([limits, len(chunks)]) + bytes(chunks) + stream


# ----------------------------------------------------- vectors ----


def read_vector(path):
    data, marks, meta = [], None, {}
    with open(path) as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if s.startswith("#"):
                body = s[1:].strip()
                if ":" in body and not body.startswith("="):
                    k, v = body.split(":", 1)
                    k = k.strip()
                    if k == "record-mark":
                        marks = [int(x, 16) for x in v.split()]
                    elif k in ("transport", "message"):
                        meta[k] = v.strip()
                continue
            data.append(bytes.fromhex("".join(s.split())))
    return b"".join(data), marks, meta


def parse_call(b):
    """(xid, prog, vers, proc, args) of an RPC call, or None."""
    try:
        xid, mtype, rpcvers, prog, vers, proc = struct.unpack_from(">6I", b, 0)
        if mtype != 0:
            return None
        off = 24
        for _ in range(2):
            n = struct.unpack_from(">I", b, off + 4)[0]
            off += 8 + n + (4 - n % 4) % 4
        if off > len(b):
            return None
        return xid, prog, vers, proc, b[off:]
    except struct.error:
        return None


def parse_success_reply(b):
    """(xid, results) of an accepted SUCCESS reply, or None."""
    try:
        xid, mtype, stat = struct.unpack_from(">3I", b, 0)
        if mtype != 1 or stat != 0:
            return None
        n = struct.unpack_from(">I", b, 16)[0]
        off = 20 + n + (4 - n % 4) % 4
        if struct.unpack_from(">I", b, off)[0] != 0:
            return None
        return xid, b[off + 4:]
    except struct.error:
        return None


def xdr_string(b):
    try:
        n = struct.unpack_from(">I", b, 0)[0]
        return b[4:4 + n] if 4 + n <= len(b) else None
    except struct.error:
        return None


def nsm_selector(prog, vers, proc, reply):
    if prog == SM_PROG and not reply:
        return {1: SEL_SM_NAME, 2: SEL_MON, 3: SEL_MON_ID, 4: SEL_MY_ID, 6: SEL_STAT_CHGE}.get(proc)
    if prog == SM_PROG and reply:
        return {1: SEL_SM_STAT_RES, 2: SEL_SM_STAT_RES, 3: SEL_SM_STAT, 4: SEL_SM_STAT}.get(proc)
    if prog == NLM_PROG and proc == 16 and not reply:
        return SEL_STATUS
    return None


def rpcbind_seed(prog, vers, proc, reply, body):
    if prog != PMAP_PROG:
        return None
    if vers == 2 and not reply and proc in (1, 2, 3):
        return bytes([SEL_MAPPING]) + body
    if vers == 2 and reply and proc == 4:
        return bytes([SEL_PMAPLIST]) + body
    if vers in (3, 4) and not reply and proc in (1, 2, 3):
        return bytes([SEL_RPCB]) + body
    if vers in (3, 4) and reply and proc == 3:
        s = xdr_string(body)
        return None if s is None else bytes([SEL_UADDR]) + s
    return None


def shape(data):
    """A key that groups messages the fuzzer would see as alike: kind, program, version,
    procedure, credential flavor (calls) or reply status (replies), and a size bucket."""
    c = parse_call(data)
    if c:
        flavor = struct.unpack_from(">I", data, 24)[0] if len(data) >= 28 else None
        return ("call", c[1], c[2], c[3], flavor, len(data) // 64)
    words = struct.unpack_from(">%dI" % min(4, len(data) // 4), data, 0)
    return ("other",) + tuple(words[1:3]) + (len(data) // 32,)


def wire_with_marks(msg, marks):
    """The TCP bytes of msg: its record marks as captured, else one fragment."""
    if not marks:
        return record(msg)
    out, off = b"", 0
    for m in marks:
        n = m & 0x7FFFFFFF
        out += u32(m) + msg[off:off + n]
        off += n
    return out if off == len(msg) else record(msg)


def from_vectors(vdir, seeds):
    if not os.path.isdir(vdir):
        print("no vectors in %s; hand-built seeds only" % vdir, file=sys.stderr)
        return
    files = sorted(f for f in os.listdir(vdir) if f.endswith(".hex"))
    vecs = []
    for f in files:
        try:
            data, marks, meta = read_vector(os.path.join(vdir, f))
        except ValueError as e:
            print("skipping %s: %s" % (f, e), file=sys.stderr)
            continue
        if len(data) >= 8:
            vecs.append((f[:-4], data, marks, meta))
    calls = {}
    for name, data, _, _ in vecs:
        c = parse_call(data)
        if c:
            calls.setdefault(c[0], c)
    shapes = {t: set() for t in TARGETS}

    def add(target, name, data, key):
        if key in shapes[target]:
            return
        shapes[target].add(key)
        seeds[target].append(("vec-" + name, data))

    for name, data, marks, meta in vecs:
        key = shape(data)
        add("rpc_call", name, data, key)
        c = parse_call(data)
        if c:
            add("dispatch", name, data, key)
        # Captured TCP messages with their real record marks; UDP ones only as a fallback shape.
        add("record_reassembly", name, reassembly(wire_with_marks(data, marks)), (bool(marks),) + key)
        if c:
            xid, prog, vers, proc, args = c
            reply = False
            body = args
        else:
            r = parse_success_reply(data)
            if not r or r[0] not in calls:
                continue
            xid, prog, vers, proc, _ = calls[r[0]]
            reply, body = True, r[1]
        sel = nsm_selector(prog, vers, proc, reply)
        if sel is not None:
            add("nsm_args", name, bytes([sel]) + body, (sel, len(body)))
        rb = rpcbind_seed(prog, vers, proc, reply, body)
        if rb is not None:
            add("rpcbind_args", name, rb, (rb[0], len(rb)))


# ------------------------------------------------- hand-built ----


def hand_built(seeds):
    long_name = b"n" * 1024  # SM_MAXSTRLEN exactly
    nsm = [
        ("mon", bytes([SEL_MON]) + mon()),
        ("mon-v4", bytes([SEL_MON]) + mon(mon_name=b"198.51.100.7", vers=4)),
        ("mon-maxlen", bytes([SEL_MON]) + mon(mon_name=long_name)),
        ("mon_id", bytes([SEL_MON_ID]) + mon_id()),
        ("my_id", bytes([SEL_MY_ID]) + my_id()),
        ("sm_name", bytes([SEL_SM_NAME]) + opaque(b"client-0042.example.test")),
        ("sm_name-empty", bytes([SEL_SM_NAME]) + opaque(b"")),
        ("stat_chge", bytes([SEL_STAT_CHGE]) + stat_chge(b"nfs-svc.example.test", 7)),
        ("status", bytes([SEL_STATUS]) + status()),
        ("sm_stat_res-succ", bytes([SEL_SM_STAT_RES]) + u32(0) + u32(3)),
        ("sm_stat_res-fail", bytes([SEL_SM_STAT_RES]) + u32(1) + u32(0xFFFFFFFF)),
        ("sm_stat", bytes([SEL_SM_STAT]) + u32(5)),
    ]
    seeds["nsm_args"] += nsm

    seeds["rpcbind_args"] += [
        ("mapping-getport", bytes([SEL_MAPPING]) + mapping()),
        ("rpcb-set", bytes([SEL_RPCB]) + rpcb()),
        ("rpcb-set-tcp6", bytes([SEL_RPCB]) + rpcb(netid=b"tcp6", addr=b"::.6.126")),
        ("rpcb-getaddr", bytes([SEL_RPCB]) + rpcb(netid=b"udp", addr=b"", owner=b"")),
        ("pmaplist", bytes([SEL_PMAPLIST]) + pmaplist([(PMAP_PROG, 2, 6, 111), (PMAP_PROG, 2, 17, 111),
                                                        (SM_PROG, 1, 17, 1662), (SM_PROG, 1, 6, 1662)])),
        ("pmaplist-empty", bytes([SEL_PMAPLIST]) + pmaplist([])),
        ("uaddr-v4", bytes([SEL_UADDR]) + b"127.0.0.1.0.111"),
        ("uaddr-v6", bytes([SEL_UADDR]) + b"::1.6.126"),
        ("uaddr-v6-mapped", bytes([SEL_UADDR]) + b"::ffff:198.51.100.7.3.255"),
    ]

    sys_cred = auth_sys(b"client-0042", 0, 0, [0, 1, 2])
    big_cred = auth_sys(b"m" * 255, 65534, 65534, list(range(16)))  # 340 bytes, RFC max 400
    calls = [
        ("sm-null", call(0x1000, SM_PROG, 1, 0)),
        ("sm-mon-auth-none", call(0x1001, SM_PROG, 1, 2, mon())),
        ("sm-mon-auth-sys", call(0x1002, SM_PROG, 1, 2, mon(), cred=sys_cred)),
        ("sm-mon-auth-sys-max", call(0x1003, SM_PROG, 1, 2, mon(), cred=big_cred)),
        ("sm-unmon", call(0x1004, SM_PROG, 1, 3, mon_id())),
        ("sm-unmon-all", call(0x1005, SM_PROG, 1, 4, my_id())),
        ("sm-stat", call(0x1006, SM_PROG, 1, 1, opaque(b"client-0042.example.test"))),
        ("sm-notify", call(0x1007, SM_PROG, 1, 6, stat_chge(b"nfs-svc.example.test", 7))),
        ("sm-vers-mismatch", call(0x1008, SM_PROG, 2, 0)),
        ("nlm-callback", call(0x1009, NLM_PROG, 3, 16, status())),
        ("rpcb-set-v4", call(0x100A, PMAP_PROG, 4, 1, rpcb())),
        ("pmap-getport", call(0x100B, PMAP_PROG, 2, 3, mapping())),
        ("rpcsec-gss-cred", call(0x100C, SM_PROG, 1, 0, cred=u32(6) + opaque(b"\0" * 20))),
        ("rpc-vers-3", call(0x100D, SM_PROG, 1, 0)[:8] + u32(3) + call(0x100D, SM_PROG, 1, 0)[12:]),
    ]
    replies = [
        ("reply-sm-mon", accepted(0x1001, 0, u32(0) + u32(3))),
        ("reply-sm-stat-fail", accepted(0x1006, 0, u32(1) + u32(3))),
        ("reply-garbage-args", accepted(0x1001, 4)),
        ("reply-prog-mismatch", accepted(0x1008, 2, u32(1) + u32(1))),
        ("reply-rpc-mismatch", denied(0x100D, u32(0) + u32(2) + u32(2))),
        ("reply-auth-badcred", denied(0x100C, u32(1) + u32(1))),
    ]
    seeds["rpc_call"] += calls + replies
    seeds["dispatch"] += calls

    mon_call = call(0x2001, SM_PROG, 1, 2, mon())
    null_call = call(0x2002, SM_PROG, 1, 0)
    seeds["record_reassembly"] += [
        ("one-record", reassembly(record(mon_call))),
        ("two-records", reassembly(record(mon_call) + record(null_call))),
        ("fragments", reassembly(record(mon_call, [1, 0, 30, 23]))),
        ("chunked", reassembly(record(mon_call) + record(null_call), chunks=(1, 3, 4, 50, 0, 7))),
        ("eof-inside", reassembly(record(mon_call)[:-5], chunks=(10,))),
        ("cap-100", reassembly(record(mon_call, [40]), limits=4 | (3 << 3))),
        ("too-large", reassembly(u32(0xFFFFFFFE) + b"\0" * 8)),
        ("too-many-fragments", reassembly(b"\0" * 40, limits=6 | (3 << 3))),
        ("empty-record", reassembly(record(b""), limits=0)),
    ]


# -------------------------------------------------------- main ----


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", default=os.path.join(ROOT, "proto", "vectors"))
    ap.add_argument("--out", default=os.path.join(HERE, "corpus"))
    a = ap.parse_args()
    seeds = {t: [] for t in TARGETS}
    from_vectors(a.vectors, seeds)  # real bytes first
    hand_built(seeds)
    for t in TARGETS:
        d = os.path.join(a.out, t)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        seen = set()
        n = 0
        for name, data in seeds[t]:
            h = hashlib.sha1(data).hexdigest()
            if h in seen:
                continue
            if n >= MAX_PER_TARGET:
                print("%s: more than %d seeds; dropped %s" % (t, MAX_PER_TARGET, name), file=sys.stderr)
                continue
            seen.add(h)
            n += 1
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)
        print("%s: %d seeds" % (t, n))


if __name__ == "__main__":
    main()
