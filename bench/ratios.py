#!/usr/bin/env python3
"""Per-round ratios kiln / REF from a peers.sh TSV (round, case, op, peer, seconds, status, time).

usage: bench/ratios.py TSV [REF_PEER (default docker-buildkit)] [PEER (default kiln)]
Prints, per case and op: PEER's median seconds, REF's median, and PEER/REF for every round
(both measured back to back in the same round), with the median of those ratios.
"""
import statistics
import sys
from collections import defaultdict

path = sys.argv[1]
ref = sys.argv[2] if len(sys.argv) > 2 else "docker-buildkit"
peer = sys.argv[3] if len(sys.argv) > 3 else "kiln"
rows = defaultdict(dict)
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if len(f) < 6 or f[5] != "ok":
        continue
    rows[(f[1], f[2])].setdefault(f[3], {})[int(f[0])] = float(f[4])
print(f"| case | op | {peer} median s | {ref} median s | {peer}/{ref} per round | median ratio |")
print("|---|---|---|---|---|---|")
for (case, op), by_peer in sorted(rows.items()):
    if peer not in by_peer or ref not in by_peer:
        continue
    a, b = by_peer[peer], by_peer[ref]
    rounds = sorted(set(a) & set(b))
    ratios = [a[r] / b[r] for r in rounds]
    print(
        f"| {case} | {op} | {statistics.median(a.values()):.3f} | {statistics.median(b.values()):.3f} | "
        + " ".join(f"{x:.2f}" for x in ratios)
        + f" | {statistics.median(ratios):.2f}x |"
    )
