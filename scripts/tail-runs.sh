#!/bin/sh
# The sell-out tail, measured repeatably: runs `load run --level 4
# --servers 2` (1000 buyers, 100 tickets, a release build) RUNS times and
# prints the p99 of each run, then min / median / max, with the machine's
# load average before and after (other work on the same cores moves every
# figure: say under what load they were taken).
#
#   scripts/tail-runs.sh                         # 5 runs, the defaults
#   RUNS=3 LOAD=/tmp/load-old scripts/tail-runs.sh -- --think-time-ms 0
#
# Arguments after `--` go to every `load run` (for example another level,
# --buyers, --think-time-ms). LOAD names a load binary to use instead of
# building this checkout's (to compare two builds, interleaved). Each run's
# JSON is kept in $OUT (default a temporary directory), named run-N.json.
# Exit status: 0 every run correct; 1 a run was not; 2 the tool failed.
set -eu

cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
OUT=${OUT:-$(mktemp -d /tmp/tail-runs.XXXXXX)}
mkdir -p "$OUT"
if [ "${1:-}" = "--" ]; then
    shift
fi
if [ -z "${LOAD:-}" ]; then
    cargo build --release -p load >&2
    LOAD=target/release/load
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
status=0
i=1
while [ "$i" -le "$RUNS" ]; do
    json="$OUT/run-$i.json"
    if "$LOAD" run --level 4 --servers 2 --buyers 1000 --tickets 100 --json "$@" >"$json"; then
        :
    else
        code=$?
        [ "$code" -eq 1 ] || exit 2
        status=1
    fi
    python3 - "$json" "$i" <<'EOF'
import json, sys
rounds = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for r in rounds:
    l = r["latency_ms"]
    line = f"run {sys.argv[2]}: {r['verdict']:<9} p50 {l['p50']:7.1f}  p99 {l['p99']:7.1f}  max {l['max']:7.1f} ms"
    s = r.get("latency_split_ms")
    if s:
        line += ("  | p99 connect {:.1} queue {:.1} server {:.1} (sale {:.1} key {:.1}) ms; "
                 "slowest 1%: connect {:.1} queue {:.1} server {:.1}").format(
            s["connect"]["p99"], s["queue"]["p99"], s["server"]["p99"],
            s.get("sale", {}).get("p99", 0), s.get("idem", {}).get("p99", 0), *s["slowest"])
    print(line)
EOF
    i=$((i + 1))
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys
p99s = []
for i in range(1, int(sys.argv[2]) + 1):
    rounds = [json.loads(line) for line in open(f"{sys.argv[1]}/run-{i}.json") if line.strip()]
    p99s += [r["latency_ms"]["p99"] for r in rounds]
print(f"p99 over {len(p99s)} runs: min {min(p99s):.1f}  median {statistics.median(p99s):.1f}  max {max(p99s):.1f} ms  (JSON in {sys.argv[1]})")
EOF
exit "$status"
