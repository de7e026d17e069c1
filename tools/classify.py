#!/usr/bin/env python3
"""Sorts a perf profile's samples into the parts of a paid request or a payment and prints
each part's share and its microseconds of CPU per operation (see tools/profile.sh).

    classify.py PERF_DATA OPS_PER_SECOND SECONDS
"""
import collections
import re
import subprocess
import sys

# (part, test on thread name, shared object, symbol), first match wins.
PARTS = [
    ("SQLite writer thread: kernel (fsync, WAL writes, wakeups)",
     lambda c, d, s: c.startswith("paychan-sqlite") and "kernel" in d),
    ("SQLite writer thread: SQLite + rusqlite", lambda c, d, s: c.startswith("paychan-sqlite")),
    ("secp256k1 (signing, verifying)", lambda c, d, s: "secp256k1" in s),
    ("kernel on the tokio threads (loopback TCP, wakeups, task switches)",
     lambda c, d, s: "kernel" in d),
    ("malloc/free",
     lambda c, d, s: re.search(r"malloc|free|_int_|unlink_chunk|realloc|consolidate|tcache", s)),
    ("memmove/memcpy", lambda c, d, s: re.search(r"memmove|memcpy|memset", s)),
    ("HTTP client (the bench's load generator)",
     lambda c, d, s: re.search(r"reqwest|hyper_util::client|client::", s)),
    ("HTTP server and codec (hyper)", lambda c, d, s: re.search(r"hyper|http|h1::|httparse", s)),
    ("BOLT 8 (ChaCha20-Poly1305)", lambda c, d, s: re.search(r"ring|chacha|poly1305|noise|bolt8", s, re.I)),
    ("parsing and encoding (JSON, base64, hex, protobuf, fmt)",
     lambda c, d, s: re.search(r"serde|base64|fmt|from_utf8|hex|parse|prost|encode|decode", s)),
    ("tokio runtime and locks", lambda c, d, s: re.search(r"tokio|parking|futex|pthread|lll", s)),
    ("paychan code (paywall, channel server, core)", lambda c, d, s: "paychan" in s),
    ("other", lambda c, d, s: True),
]
LINE = re.compile(r"\s*[\d.]+%\s+(\d+)\s+(\S+)\s+(\S+)\s+\[.\]\s+(.*)")


def main():
    data, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "-n", "--sort", "comm,dso,sym",
         "--stdio", "-g", "none"],
        capture_output=True, text=True, check=True).stdout
    parts = collections.Counter()
    for line in report.splitlines():
        m = LINE.match(line)
        if line.startswith("#") or not m:
            continue
        count, comm, dso, sym = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        parts[next(name for name, test in PARTS if test(comm, dso, sym))] += count
    total = sum(parts.values())
    cores = total / 999 / seconds
    per_op = cores / rate * 1e6
    print(f"{total} samples: {cores:.2f} cores busy at {rate:.0f}/s = {per_op:.1f} µs of CPU per operation")
    for name, count in parts.most_common():
        print(f"{100 * count / total:6.2f}%  {per_op * count / total:6.1f} µs  {name}")


if __name__ == "__main__":
    main()
