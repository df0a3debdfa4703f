#!/usr/bin/env bash
# Instructions per enrollment, per transition, per email and per signup: the icount workload
# (benches/icount.rs) run under callgrind, which dumps and zeroes its counts on entering the
# bench's `phase_done` (--dump-before), so one run counts each phase by itself: no phase is the
# difference of two runs. The whole run is made ICOUNT_RUNS times (default 3); each phase
# prints the median and the spread (largest − least, in per cent of the median).
#   bash benches/icount.sh [N]        (default 2,000 leads; builds the release bench first)
#   ICOUNT_BIN=path bash benches/icount.sh [N]   counts another build of the same workload
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"
command -v valgrind >/dev/null || { echo "icount: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
bin="${ICOUNT_BIN:-}"
if [ -z "$bin" ]; then
  bin=$(cargo bench --bench icount --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="icount" and m.get("executable"): print(m["executable"])' | tail -n1)
fi
[ -x "$bin" ] || { echo "icount: no bench binary" >&2; exit 2; }
runs="${ICOUNT_RUNS:-3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for r in $(seq "$runs"); do
  valgrind --tool=callgrind --dump-before='*phase_done*' --callgrind-out-file="$work/cg.$r" \
    "$bin" "$n" >"$work/items.$r" 2>"$work/log.$r" \
    || { cat "$work/log.$r" >&2; exit 1; }
done
echo "icount: $n leads, $(basename "$bin"), $runs runs"
python3 - "$work" "$runs" <<'PY'
import os, re, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
items = {}
phases = []
for r in range(1, runs + 1):
    for line in open(f"{work}/items.{r}"):
        name, k = line.split(":")
        items[name] = int(k)
        if r == 1:
            phases.append(name)
# An older build of the workload has fewer phases: those it printed, with a dump each.
phases = [p for i, p in enumerate(phases, 1) if os.path.exists(f"{work}/cg.1.{i}")]
per = {p: [] for p in phases}
for r in range(1, runs + 1):
    # Dump i (1-based) holds what ran before the i-th phase_done: phase i.
    for i, p in enumerate(phases, 1):
        text = open(f"{work}/cg.{r}.{i}").read()
        total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
        per[p].append(total)
for p in phases:
    xs = per[p]
    med = statistics.median(xs)
    spread = (max(xs) - min(xs)) / med * 100
    if p == "setup":
        print(f"  {p:<8} {med:>15,.0f} instructions{'':>24} spread {spread:4.2f} %")
    else:
        print(f"  {p:<8} {med:>15,.0f} instructions, {items[p]:>6} items, {med / items[p]:>10,.0f} per item, spread {spread:4.2f} %")
PY
