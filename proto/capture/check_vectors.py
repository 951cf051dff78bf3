#!/usr/bin/env python3
"""check_vectors.py - parse every proto/vectors/*.hex the way the Rust tests
will (README.md, "Vector file format") and check it is self-consistent:
hex body parses, record marks add up to the body length, the RPC header is
well formed, #= disk bytes parse.  Usage: check_vectors.py [DIR]"""

import glob
import os
import re
import struct
import sys


def parse(path):
    meta, disk, body = {}, [], []
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("#="):
            disk.append(bytes.fromhex(line[2:].replace(" ", "")))
        elif line.startswith("#"):
            m = re.match(r"^# (source|transport|message|record-mark|file): (.*)$", line)
            if m:
                meta.setdefault(m.group(1), m.group(2))
        elif line.strip():
            body.append(re.sub(r"\s+", "", line))
    return meta, b"".join(disk), bytes.fromhex("".join(body))


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "vectors")
    bad = 0
    files = sorted(glob.glob(os.path.join(d, "*.hex")))
    for p in files:
        name = os.path.basename(p)
        try:
            meta, disk, data = parse(p)
            for k in ("source", "transport", "message"):
                assert k in meta, "missing # %s:" % k
            assert meta["transport"] in ("udp", "tcp", "local"), meta["transport"]
            assert meta["message"] in ("rpc call", "rpc reply"), meta["message"]
            if meta["transport"] == "udp":
                assert "record-mark" not in meta, "record mark on udp"
            else:
                marks = [int(x, 16) for x in meta["record-mark"].split()]
                assert marks[-1] & 0x80000000 and sum(m & 0x7FFFFFFF for m in marks) == len(data), \
                    "record mark does not match body length %d" % len(data)
            xid, mtype = struct.unpack_from(">II", data, 0)
            assert mtype == (0 if meta["message"] == "rpc call" else 1), "message type"
            assert ("-call" in name) == (mtype == 0), "name does not say call/reply"
            if "file" in meta:
                assert disk, "# file: without #= bytes"
        except Exception as e:  # noqa: BLE001
            bad += 1
            print("%s: %s" % (name, e))
    print("%d vectors, %d bad" % (len(files), bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
