#!/usr/bin/env python3
"""extract.py - turn the raw material of proto/capture.sh into proto/vectors/*.hex.

Input ($OUT, written by capture.sh):
  <step>.pcap     tcpdump -i any in host A (LINUX_SLL2), one per step
  <step>.cmd      the commands the step ran ("a: ..." / "b: ...")
  statd-a.strace  strace -xx of rpc.statd A (its AF_LOCAL rpcbind traffic)
  disk/<name>/    copies of host A's /var/lib/nfs at points of interest
  meta.txt        package versions and daemon command lines
Output ($VEC): one .hex file per message (format: proto/README.md), and
$VEC/captures/*.pcap when they total less than 200 KiB.

Messages are picked by content (program/version/procedure, xid, transport),
never by frame number, so a re-run on another machine picks the same ones.
The decoded comment is tshark's own -V output for the frame (RPC and
program layers only), so field names are tshark's.
"""

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys

# ------------------------------------------------------------ messages ----


class Msg:
    """One RPC message: from a pcap (udp/tcp) or from strace (local)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.hdr = parse_rpc_header(self.data)

    def __repr__(self):
        return "Msg(%s frame=%s %s %s:%s->%s:%s %s)" % (
            self.step, self.frame, self.transport, self.src, self.sport,
            self.dst, self.dport, self.hdr)


def parse_rpc_header(b):
    h = {}
    if len(b) < 8:
        return h
    h["xid"], h["mtype"] = struct.unpack_from(">II", b, 0)
    if h["mtype"] == 0 and len(b) >= 24:
        h["rpcvers"], h["prog"], h["vers"], h["proc"] = struct.unpack_from(">IIII", b, 8)
    return h


def read_pcap(path):
    """Yield (frame_no, ts, l3 packet bytes, ip_version) from a classic pcap."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    else:
        e = ">"
    linktype = struct.unpack_from(e + "I", data, 20)[0]
    off, n = 24, 0
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack_from(e + "IIII", data, off)
        pkt = data[off + 16: off + 16 + incl]
        off += 16 + incl
        n += 1
        if linktype == 276:       # LINUX_SLL2
            proto, l3 = struct.unpack_from(">H", pkt, 0)[0], pkt[20:]
        elif linktype == 113:     # LINUX_SLL
            proto, l3 = struct.unpack_from(">H", pkt, 14)[0], pkt[16:]
        elif linktype == 1:       # Ethernet
            proto, l3 = struct.unpack_from(">H", pkt, 12)[0], pkt[14:]
        elif linktype == 101:     # raw IP
            proto, l3 = (0x0800 if pkt[0] >> 4 == 4 else 0x86DD), pkt
        else:
            raise SystemExit("%s: unsupported linktype %d" % (path, linktype))
        yield n, sec + usec / 1e6, proto, l3


def fmt_addr(raw):
    if len(raw) == 4:
        return ".".join(str(x) for x in raw)
    import ipaddress
    return str(ipaddress.IPv6Address(raw))


def pcap_messages(step, path):
    msgs, streams = [], {}
    for frame, ts, proto, l3 in read_pcap(path):
        if proto == 0x0800:
            ihl = (l3[0] & 15) * 4
            tot = struct.unpack_from(">H", l3, 2)[0]
            l4proto, src, dst, l4 = l3[9], l3[12:16], l3[16:20], l3[ihl:tot]
        elif proto == 0x86DD:
            plen = struct.unpack_from(">H", l3, 4)[0]
            l4proto, src, dst, l4 = l3[6], l3[8:24], l3[24:40], l3[40:40 + plen]
        else:
            continue
        src, dst = fmt_addr(src), fmt_addr(dst)
        if l4proto == 17:
            sport, dport = struct.unpack_from(">HH", l4, 0)
            msgs.append(Msg(step=step, frame=frame, ts=ts, transport="udp", src=src, sport=sport,
                            dst=dst, dport=dport, marks=None, data=l4[8:]))
        elif l4proto == 6:
            sport, dport, seq = struct.unpack_from(">HHI", l4, 0)
            doff = (l4[12] >> 4) * 4
            payload = l4[doff:]
            if not payload:
                continue
            key = (src, sport, dst, dport)
            st = streams.setdefault(key, {"next": seq, "buf": b"", "frags": [], "marks": []})
            if seq != st["next"]:
                if (seq - st["next"]) & 0x80000000:   # retransmission of old data
                    continue
                raise SystemExit("%s frame %d: TCP gap" % (path, frame))
            st["next"] = (seq + len(payload)) & 0xFFFFFFFF
            st["buf"] += payload
            while len(st["buf"]) >= 4:
                mark = struct.unpack_from(">I", st["buf"], 0)[0]
                ln = mark & 0x7FFFFFFF
                if len(st["buf"]) < 4 + ln:
                    break
                st["frags"].append(st["buf"][4:4 + ln])
                st["marks"].append(mark)
                st["buf"] = st["buf"][4 + ln:]
                if mark & 0x80000000:
                    msgs.append(Msg(step=step, frame=frame, ts=ts, transport="tcp", src=src,
                                    sport=sport, dst=dst, dport=dport, marks=st["marks"],
                                    data=b"".join(st["frags"])))
                    st["frags"], st["marks"] = [], []
    return msgs


# -------------------------------------------------------------- strace ----
STRACE_RE = re.compile(r'^(\d+)\s+([\d:.]+)\s+(\w+)\((.*)\) = (-?\d+)')
HEX_RE = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def unhex(s):
    return bytes(int(x, 16) for x in s.split("\\x")[1:])


def strace_messages(step, path, sock_paths=("/run/rpcbind.sock", "/var/run/rpcbind.sock")):
    """RPC messages rpc.statd exchanged with rpcbind over AF_LOCAL.

    Follows fds: connect() to the rpcbind socket starts a connection;
    socket(), accept(), close() on the same fd end it."""
    conns, msgs, nconn = {}, [], 0
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        m = STRACE_RE.match(line)
        if not m:
            continue
        _pid, ts, call, args, ret = m.groups()
        ret = int(ret)
        if call in ("socket", "accept", "accept4"):
            conns.pop(ret, None)
            continue
        fm = re.match(r"(\d+)(?:, (.*))?$", args, re.S)
        if not fm:
            continue
        fd, rest = int(fm.group(1)), fm.group(2) or ""
        if call == "close":
            conns.pop(fd, None)
            continue
        if call == "connect":
            conns.pop(fd, None)
            if "AF_UNIX" in rest:
                hm = HEX_RE.search(rest)
                if hm and unhex(hm.group(1)).decode() in sock_paths and ret == 0:
                    nconn += 1
                    conns[fd] = {"id": nconn, "out": [b"", [], []], "in": [b"", [], []],
                                 "path": unhex(hm.group(1)).decode()}
            continue
        if fd not in conns:
            continue
        c = conns[fd]
        if call in ("write", "read"):
            if ret <= 0:
                continue
            hm = HEX_RE.match(rest)
            data = unhex(hm.group(1))[:ret]
            d = "out" if call == "write" else "in"
        else:
            raise SystemExit("%s on the rpcbind socket is not decoded: %s" % (call, line.strip()))
        st = c[d]
        st[0] += data
        while len(st[0]) >= 4:
            mark = struct.unpack_from(">I", st[0], 0)[0]
            ln = mark & 0x7FFFFFFF
            if len(st[0]) < 4 + ln:
                break
            st[1].append(st[0][4:4 + ln])
            st[2].append(mark)
            st[0] = st[0][4 + ln:]
            if mark & 0x80000000:
                local = "rpc.statd (connection %d)" % c["id"]
                src, dst = (local, c["path"]) if d == "out" else (c["path"], local)
                msgs.append(Msg(step=step, frame=None, ts=ts, transport="local", src=src,
                                sport=None, dst=dst, dport=None, marks=st[2],
                                data=b"".join(st[1]), conn=c["id"],
                                direction=d, syscall=call))
                st[1], st[2] = [], []
    return msgs


def write_synth_pcap(path, msgs):
    """Wrap AF_LOCAL messages in fake IPv4/TCP (127.0.0.1:1000+conn <-> :111)
    so tshark can decode them.  Raw-IP linktype, no handshake."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    seqs = {}
    for i, m in enumerate(msgs):
        cport = 1000 + m.conn
        sport, dport = (cport, 111) if m.direction == "out" else (111, cport)
        key = (sport, dport)
        seq = seqs.get(key, 1)
        ack = seqs.get((dport, sport), 1)
        payload = b"".join(struct.pack(">I", mk) + b"" for mk in m.marks[:1]) + m.data \
            if len(m.marks) == 1 else None
        if payload is None:
            raise SystemExit("multi-fragment AF_LOCAL message not supported")
        seqs[key] = seq + len(payload)
        tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 65535, 0, 0)
        tot = 20 + len(tcp) + len(payload)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, tot, i, 0x4000, 64, 6, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
        pkt = ip + tcp + payload
        out.append(struct.pack("<IIII", 1, i * 1000, len(pkt), len(pkt)) + pkt)
        m.synth_frame = i + 1
    with open(path, "wb") as f:
        f.write(b"".join(out))


# -------------------------------------------------------------- tshark ----
_tshark_cache = {}


def tshark_frames(pcap):
    """{frame number: [lines of the RPC layers]} from tshark -V."""
    if pcap in _tshark_cache:
        return _tshark_cache[pcap]
    txt = subprocess.run(["tshark", "-r", pcap, "-V", "-O", "rpc,stat,portmap,nlm"],
                         capture_output=True, text=True, check=True).stdout
    frames, cur = {}, None
    for line in txt.splitlines():
        m = re.match(r"^Frame (\d+):", line)
        if m:
            cur = frames.setdefault(int(m.group(1)), [])
            continue
        if cur is not None:
            cur.append(line)
    out = {}
    for n, lines in frames.items():
        # keep everything from the first RPC layer on
        for i, l in enumerate(lines):
            if l.startswith("Remote Procedure Call"):
                out[n] = lines[i:]
                break
        else:
            out[n] = []
    _tshark_cache[pcap] = out
    return out


def rpc_block(lines, xid):
    """The lines of the RPC PDU with this xid (a TCP frame may hold several)."""
    blocks, cur = [], None
    for l in lines:
        if l.startswith("Remote Procedure Call"):
            cur = []
            blocks.append(cur)
        if cur is not None and l.strip():
            cur.append(l)
    for b in blocks:
        if re.search(r"XID:0x%08x\b" % xid, b[0]):
            return b
    return blocks[0] if blocks else []


def abridge(lines):
    keep = []
    for l in lines:
        if "[Time from request" in l:
            continue
        if re.match(r"^[0-9a-f]{4}  [0-9a-f]{2} ", l):   # hex dump of undecoded data
            continue
        if l.startswith("    [This is a reply to a request in frame") or \
                l.startswith("    [The reply to this request is in frame"):
            continue
        keep.append(l.rstrip())
    return keep


# ------------------------------------------------------------- own decode -
class Rd:
    def __init__(self, b, o=0):
        self.b, self.o = b, o

    def u32(self):
        v = struct.unpack_from(">I", self.b, self.o)[0]
        self.o += 4
        return v

    def i32(self):
        v = struct.unpack_from(">i", self.b, self.o)[0]
        self.o += 4
        return v

    def opaque(self, n=None):
        if n is None:
            n = self.u32()
        v = self.b[self.o:self.o + n]
        if len(v) != n:
            raise ValueError("short")
        self.o += n + (4 - n % 4) % 4
        return v


def call_args_offset(b):
    r = Rd(b, 24)
    r.u32(); r.opaque()
    r.u32(); r.opaque()
    return r.o


AUTH_STAT = {0: "AUTH_OK", 1: "AUTH_BADCRED", 2: "AUTH_REJECTEDCRED", 3: "AUTH_BADVERF",
             4: "AUTH_REJECTEDVERF", 5: "AUTH_TOOWEAK", 6: "AUTH_INVALIDRESP", 7: "AUTH_FAILED"}


def own_decode(m, call=None):
    """Decode what tshark 4.0 leaves undecoded: rpcbind v3/v4 SET/UNSET bodies
    (tshark: "Unknown RPC call/reply body"), NLM procedure 16 (tshark: "Data"),
    RPC version != 2 (tshark: "Continuation data"), auth_stat 7 (tshark:
    "Unknown (7)").  Field names follow proto/*.x."""
    b, out = m.data, []
    r = Rd(b)
    xid, mtype = r.u32(), r.u32()
    if mtype == 0:
        rpcvers, prog, vers, proc = r.u32(), r.u32(), r.u32(), r.u32()
        cf, cb = r.u32(), r.opaque()
        vf, vb = r.u32(), r.opaque()
        out.append("rpc_msg: xid=0x%08x CALL rpcvers=%d prog=%d vers=%d proc=%d" % (xid, rpcvers, prog, vers, proc))
        out.append("  cred: flavor=%d body=%s  verf: flavor=%d body=%s" % (cf, cb.hex() or "(empty)", vf, vb.hex() or "(empty)"))
        if rpcvers != 2:
            out.append("  (rpcvers %d: RFC 5531 says reply MSG_DENIED/RPC_MISMATCH; libtirpc sends nothing)" % rpcvers)
        elif prog == 100000 and vers in (3, 4) and proc in (1, 2, 3):
            rp, rv = r.u32(), r.u32()
            netid, addr, owner = r.opaque(), r.opaque(), r.opaque()
            out.append("  rpcb: r_prog=%d r_vers=%d r_netid=%r r_addr=%r r_owner=%r"
                       % (rp, rv, netid.decode(), addr.decode(), owner.decode()))
        elif prog == 100024 and proc == 1:
            if len(b) - r.o < 4:
                out.append("  sm_name: missing (%d argument bytes)" % (len(b) - r.o))
                return out
            n = r.u32()
            have = len(b) - r.o
            if have < n:
                out.append("  sm_name: mon_name length %d but only %d bytes follow (truncated)" % (n, have))
                return out
            r.o -= 4
            name = r.opaque()
            out.append("  sm_name: mon_name=%r (length %d)" % (name.decode(errors="replace"), len(name)))
        elif prog == 100021 and proc == 16:
            name = r.opaque()
            state = r.i32()
            priv = r.opaque(16)
            out.append("  status: mon_name=%r (length %d) state=%d priv=%s"
                       % (name.decode(errors="replace"), len(name), state, priv.hex()))
        if r.o != len(b):
            out.append("  (%d bytes not accounted for)" % (len(b) - r.o))
        return out
    rstat = r.u32()
    if rstat == 1:
        rj = r.u32()
        if rj == 1:
            st = r.u32()
            out.append("rpc_msg: xid=0x%08x REPLY MSG_DENIED AUTH_ERROR auth_stat=%d (%s)"
                       % (xid, st, AUTH_STAT.get(st, "?")))
        else:
            lo, hi = r.u32(), r.u32()
            out.append("rpc_msg: xid=0x%08x REPLY MSG_DENIED RPC_MISMATCH low=%d high=%d" % (xid, lo, hi))
        return out
    vf, vb = r.u32(), r.opaque()
    astat = r.u32()
    out.append("rpc_msg: xid=0x%08x REPLY MSG_ACCEPTED verf: flavor=%d body=%s accept_stat=%d"
               % (xid, vf, vb.hex() or "(empty)", astat))
    if astat == 0 and call is not None:
        h = call.hdr
        if h.get("prog") == 100000 and h.get("vers") in (3, 4) and h.get("proc") in (1, 2):
            out.append("  result: bool %d (%s)" % (r.u32(), "TRUE" if b[-1] else "FALSE"))
        elif h.get("prog") == 100021 and h.get("proc") == 16:
            out.append("  result: void")
    return out


# ------------------------------------------------------------- manifest ---
class Ctx:
    def __init__(self, out, vec):
        self.out, self.vec = out, vec
        self.meta = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "meta.txt")))
        self.msgs = {}
        self.written = []
        self.here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def step(self, step):
        if step not in self.msgs:
            self.msgs[step] = pcap_messages(step, os.path.join(self.out, step + ".pcap"))
        return self.msgs[step]

    def cmds(self, step):
        with open(os.path.join(self.out, step + ".cmd")) as f:
            return [self.clean(l.rstrip("\n")) for l in f if l.strip()]

    def clean(self, s):
        s = s.replace("python3 " + os.path.join(self.here, "capture", "rpcdrv.py"),
                      "proto/capture/rpcdrv.py")
        return re.sub(r"(\w)\1{40,}", lambda m: "<%d x '%s'>" % (len(m.group(0)), m.group(1)), s)

    def find_call(self, step, n=0, **kw):
        hits = [m for m in self.step(step) if m.hdr.get("mtype") == 0
                and all(m.hdr.get(k) == v if k in ("xid", "prog", "vers", "proc")
                        else getattr(m, k) == v for k, v in kw.items())]
        if len(hits) <= n:
            raise SystemExit("%s: no call #%d matching %s; calls: %s" % (
                step, n, kw, [m for m in self.step(step) if m.hdr.get("mtype") == 0]))
        return hits[n]

    def find_reply(self, call, msgs=None):
        msgs = msgs if msgs is not None else self.step(call.step)
        for m in msgs:
            if m.hdr.get("mtype") == 1 and m.hdr["xid"] == call.hdr["xid"] and \
                    m.src == call.dst and m.dst == call.src and m.dport == call.sport:
                return m
        return None

    def driver_cmd(self, step, xid):
        for c in self.cmds(step):
            if "--xid 0x%08x" % xid in c:
                return c
        return None

    SOURCES = {
        "statd": "Debian nfs-common {nfs-common} rpc.statd on host A, started as `{statd_cmd}`",
        "statd-b": "Debian nfs-common {nfs-common} rpc.statd on host B (198.51.100.2), started as `{statd_cmd}`",
        "smnotify": "Debian nfs-common {nfs-common} sm-notify on host A",
        "rpcinfo": "Debian rpcbind {rpcbind} rpcinfo (libtirpc3 {libtirpc3}) on host A",
        "rpcbind": "Debian rpcbind {rpcbind} on host A, started as `{rpcbind_cmd}`",
        "rpcbind-b": "Debian rpcbind {rpcbind} on host B (198.51.100.2), started as `{rpcbind_cmd}`",
        "driver": "capture driver proto/capture/rpcdrv.py (python; NOT a Debian tool: only the reply to it is real)",
        "fakelockd": "fake lockd proto/capture/rpcdrv.py fake-lockd (python; NOT a Debian tool; answers like Linux lockd: ACCEPTED/SUCCESS, void)",
    }

    def emit(self, name, m, src, how, call=None, notes=(), disk=(), pcap=None):
        source = self.SOURCES[src].format(**self.meta)
        lines = ["# source: %s" % source]
        if how:
            lines.append("#   produced by: %s" % how)
        lines.append("# transport: %s" % m.transport)
        if m.marks:
            lines.append("# record-mark: %s" % " ".join("%08x" % x for x in m.marks))
        lines.append("# message: %s" % ("rpc call" if m.hdr["mtype"] == 0 else "rpc reply"))
        if m.transport == "local":
            lines.append("# captured: strace -xx of rpc.statd, %s() on its AF_LOCAL stream to %s "
                         "(connection %d); decoded from captures/%s frame %d, a synthesized "
                         "IPv4/TCP wrapper around the same bytes"
                         % (m.syscall, m.src if m.direction == "in" else m.dst, m.conn,
                            os.path.basename(pcap), m.synth_frame))
        else:
            lines.append("# captured: captures/%s.pcap frame %d, %s:%d -> %s:%d" % (
                m.step, m.frame, m.src, m.sport, m.dst, m.dport))
        for n in notes:
            lines.append("# note: %s" % n)
        for fname, content, info in disk:
            lines.append("# file: %s" % fname)
            lines.append("#   (%s)" % info)
            lines.append("# disk-bytes:")
            for i in range(0, len(content), 16):
                lines.append("#= " + " ".join("%02x" % x for x in content[i:i + 16]))
            lines.append("#   (as text: %r)" % content.decode(errors="replace"))
        tpcap = pcap or os.path.join(self.out, m.step + ".pcap")
        frame = m.synth_frame if m.transport == "local" else m.frame
        dec = abridge(rpc_block(tshark_frames(tpcap).get(frame, []), m.hdr["xid"]))
        lines.append("# decoded (tshark %s -V, abridged):" % self.meta.get("tshark", ""))
        lines += ["#   " + l for l in dec]
        text = "\n".join(dec)
        if any(k in text for k in ("Unknown RPC call/reply body", "Data (", "Continuation data",
                                   "Unknown (", "Malformed")) or not dec:
            lines.append("# decoded (proto/capture/extract.py, where tshark is silent or vague):")
            lines += ["#   " + l for l in own_decode(m, call)]
        for i in range(0, len(m.data), 16):
            chunk = m.data[i:i + 16]
            lines.append(" ".join(chunk[j:j + 4].hex() for j in range(0, len(chunk), 4)))
        with open(os.path.join(self.vec, name + ".hex"), "w") as f:
            f.write("\n".join(lines) + "\n")
        self.written.append((name, m))

    def disk(self, snap, rel):
        path = os.path.join(self.out, "disk", snap, rel)
        st = os.lstat(path)
        with open(path, "rb") as f:
            return (rel, f.read(), "mode %04o, uid %d, gid %d" % (st.st_mode & 0o7777, st.st_uid, st.st_gid))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--vectors", required=True)
    a = ap.parse_args()
    os.makedirs(a.vectors, exist_ok=True)
    for f in os.listdir(a.vectors):
        if f.endswith(".hex"):
            os.unlink(os.path.join(a.vectors, f))
    cx = Ctx(a.out, a.vectors)
    import manifest  # noqa: E402  (proto/capture/manifest.py)
    manifest.run(cx)
    # captures/: the pcaps, if small
    capdir = os.path.join(a.vectors, "captures")
    pcaps = sorted(f for f in os.listdir(a.out) if f.endswith(".pcap"))
    total = sum(os.path.getsize(os.path.join(a.out, f)) for f in pcaps)
    if os.path.isdir(capdir):
        shutil.rmtree(capdir)
    if total < 200 * 1024:
        os.makedirs(capdir)
        for f in pcaps:
            shutil.copy(os.path.join(a.out, f), capdir)
    else:
        print("pcaps total %d bytes: not copied" % total, file=sys.stderr)
    print("wrote %d vectors" % len(cx.written), file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
