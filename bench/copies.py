"""Sums the copies `bench/profile.sh copies` recorded: `perf script` output on stdin (probe
events with a len= argument and dwarf call chains), per size and per calling line of ours."""

import collections
import re
import subprocess
import sys

REQUESTS = int(sys.argv[1]) if len(sys.argv) > 1 else 1
BINARY = sys.argv[2] if len(sys.argv) > 2 else None

samples = []  # (len, [(ip, sym)])
current = None
for line in sys.stdin:
    line = line.rstrip("\n")
    m = re.search(r"len=(\d+)", line)
    if m and not line.startswith((" ", "\t")):
        current = (int(m.group(1)), [])
        samples.append(current)
        continue
    if current is not None and line.strip():
        parts = line.split(None, 1)
        if len(parts) == 2:
            current[1].append((parts[0], parts[1]))

def caller(frames):
    """The first frame outside glibc's copy routines, and outside core/alloc helpers."""
    for ip, sym in frames[1:]:
        if "unknown" in sym:
            continue
        return ip, sym
    return None, "?"

buckets = collections.Counter()
by_site = collections.Counter()
bytes_by_site = collections.Counter()
for length, frames in samples:
    b = 1
    while b < length:
        b *= 2
    buckets[b] += 1
    ip, sym = caller(frames)
    by_site[(ip, sym)] += 1
    bytes_by_site[(ip, sym)] += length

print(f"copies={len(samples)} per_request={len(samples) / REQUESTS:.1f}")
print("size (up to)  copies per request")
for b in sorted(buckets):
    print(f"{b:>12}  {buckets[b] / REQUESTS:8.2f}")

lines = {}
if BINARY:
    # perf gives each frame as symbol+offset; the symbol's address comes from the binary.
    table = {}
    for l in subprocess.run(["nm", BINARY], capture_output=True, text=True).stdout.splitlines():
        f = l.split()
        if len(f) == 3:
            table.setdefault(f[2], int(f[0], 16))
    resolved = {}
    for (ip, sym), _ in by_site.most_common(40):
        name, _, off = sym.rpartition("+0x")
        if name in table:
            resolved[ip] = format(table[name] + int(off, 16), "x")
    ips = list(resolved.values())
    out = subprocess.run(["addr2line", "-e", BINARY, "-f", "-C", "-i", "-a", *ips],
                         capture_output=True, text=True).stdout.splitlines()
    addr = None
    for l in out:
        if l.startswith("0x"):
            addr = l[2:].lstrip("0")
            lines[addr] = []
        elif addr is not None and ":" in l and not l.startswith("??"):
            lines[addr].append(l.rsplit("/", 2)[-1] if "/src/" in l else l)
print("\nper request  avg bytes  caller")
for (ip, sym), n in by_site.most_common(40):
    where = " <- ".join(lines.get(resolved.get(ip, "").lstrip("0"), [])[:3]) if BINARY else ""
    print(f"{n / REQUESTS:10.2f}  {bytes_by_site[(ip, sym)] // n:9d}  {where or sym[:90]}")
