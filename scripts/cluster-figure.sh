#!/bin/sh
# The figure of docs/08-cluster.md: sustained Level 4 (redis-lua, two
# servers) on one Redis and on a three-master Redis Cluster, in one run, on
# the same PostgreSQL, alternating A B A B so that other work on the machine
# weighs on both alike. Prints each round's sales per second and the ratio
# of the medians (cluster / one Redis).
#
#   scripts/cluster-figure.sh                        # release build, 3 x 10 s each
#   PROFILE=dev ROUNDS=1 DURATION=3 scripts/cluster-figure.sh   # a quick check
#
# The services are throwaway ones (`load services --redis` and
# `load services --redis-cluster`), stopped when the script ends.
set -eu

cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
    cargo build --release -p load -p level4
    LOAD=target/release/load
else
    cargo build -p load -p level4
    LOAD=target/debug/load
fi

TMP=$(mktemp -d)
PIDS=""
cleanup() {
    for pid in $PIDS; do kill "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Starts `load services $1` writing its URLs to $2; waits for the file.
start_services() {
    env -u DATABASE_URL -u REDIS_URL "$LOAD" services "$1" --env-file "$2" >/dev/null 2>&1 &
    PIDS="$PIDS $!"
    for _ in $(seq 1 600); do
        [ -s "$2" ] && return 0
        sleep 0.2
    done
    echo "load services $1 did not come up" >&2
    exit 2
}
start_services --redis "$TMP/single.env"
start_services --redis-cluster "$TMP/cluster.env"
url() { sed -n "s/^$1=//p" "$2"; }
DB=$(url DATABASE_URL "$TMP/single.env")
SINGLE=$(url REDIS_URL "$TMP/single.env")
CLUSTER=$(url REDIS_URL "$TMP/cluster.env")

echo "machine: $(nproc) cores, $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "Level 4 redis-lua, 2 servers, $CONCURRENCY concurrent buyers, $DURATION s per round, $PROFILE build"
echo "round  deployment      sales/s  p50_ms  p99_ms  verdict"
: >"$TMP/single.txt"
: >"$TMP/cluster.txt"
for round in $(seq 1 "$ROUNDS"); do
    for which in single cluster; do
        if [ "$which" = single ]; then redis=$SINGLE; else redis=$CLUSTER; fi
        "$LOAD" run --level 4 --strategy redis-lua --servers 2 \
            --duration "$DURATION" --concurrency "$CONCURRENCY" --json \
            --database-url "$DB" --redis-url "$redis" >"$TMP/out.json" 2>>"$TMP/load.log" || true
        python3 - "$TMP/out.json" "$round" "$which" "$TMP/$which.txt" <<'PY'
import json, sys
report = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
sales = report["sales_per_sec"]
lat = report["latency_ms"]
print(f"{sys.argv[2]:>5}  {sys.argv[3]:<14} {sales:>8.0f}  {lat['p50']:>6.1f}  {lat['p99']:>6.1f}  {report['verdict']}")
open(sys.argv[4], "a").write(f"{sales}\n")
PY
    done
done
python3 - "$TMP/single.txt" "$TMP/cluster.txt" <<'PY'
import statistics, sys
single = statistics.median(float(x) for x in open(sys.argv[1]))
cluster = statistics.median(float(x) for x in open(sys.argv[2]))
print(f"median sales/s: one Redis {single:.0f}, cluster {cluster:.0f}; cluster / one Redis = {cluster / single:.2f}")
PY
