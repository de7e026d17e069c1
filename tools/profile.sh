#!/bin/bash
# Profiles one phase of a `paychan bench` run with perf and prints where its CPU goes, per
# operation (docs/performance.md, "where each microsecond goes").
#
#   tools/profile.sh BIN NAME MARKER -- BENCH ARGS...
#   tools/profile.sh target/release/paychan http "^paid requests on" -- http --requests 2000
#   tools/profile.sh target/release/paychan pay "^paying:" -- pay --channels 100 --payments 2000
#
# MARKER is the line the bench prints on stderr when the phase to profile starts (anchored:
# "unpaid requests on" would match an unanchored "paid requests on"). perf samples the process
# for 3 s at 999 Hz; the per-operation figure divides the busy cores by the phase's rate from
# the bench's JSON (`paid_per_s` or `payments_per_s`).
set -euo pipefail
bin=$1 name=$2 marker=$3
shift 4
out=${PROFILE_DIR:-/tmp}/$name
rm -f "$out.err" "$out.perf"
"$bin" --json bench "$@" > "$out.json" 2> "$out.err" &
pid=$!
for _ in $(seq 1 1200); do grep -q "$marker" "$out.err" && break; sleep 0.1; done
sleep 0.3
perf record -o "$out.perf" -F 999 -g -p "$pid" -- sleep 3 > /dev/null 2>&1
wait "$pid"
rate=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('paid_per_s') or d['payments_per_s'])" "$out.json")
python3 "$(dirname "$0")/classify.py" "$out.perf" "$rate" 3
