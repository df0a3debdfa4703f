#!/usr/bin/env bash
# Instructions per enrollment, per transition, per email and per signup: the icount workload
# (benches/icount.rs) counted by callgrind up to each phase, each phase's count minus the one
# before, divided by what the phase handled. A whole run repeats to about 1 % (which of
# SQLite's reading connections a query lands on, and so how often a statement is prepared,
# varies), so each prefix is counted ICOUNT_RUNS times (default 3) and the least is kept.
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
count() {  # count PHASE -> "least-instructions items"
  local out log total items best=""
  out=$(mktemp); log=$(mktemp)
  for _ in $(seq "$runs"); do
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$n" --until "$1" >"$log.stdout" 2>"$log"
    total=$(grep -oE 'Collected : [0-9]+' "$log" | grep -oE '[0-9]+$')
    items=$(grep -oE "^$1: [0-9]+" "$log.stdout" | grep -oE '[0-9]+$')
    if [ -z "$best" ] || [ "$total" -lt "$best" ]; then best=$total; fi
  done
  rm -f "$out" "$log" "$log.stdout"
  echo "$best $items"
}
prev=""
echo "icount: $n leads, $(basename "$bin"), least of $runs runs per phase"
for phase in setup enroll rounds emails signups; do
  read -r total items < <(count "$phase")
  if [ -n "$prev" ]; then
    per=$(( (total - prev) / items ))
    printf '  %-8s %'"'"'15d instructions, %6d items, %'"'"'10d per item\n' "$phase" "$((total - prev))" "$items" "$per"
  else
    printf '  %-8s %'"'"'15d instructions\n' "$phase" "$total"
  fi
  prev=$total
done
