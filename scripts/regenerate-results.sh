#!/bin/sh
# Regenerates every figure in docs/results from the current code, in one
# run: the tour and the sustained tour, each with the fast settings
# (PostgreSQL fsync/synchronous_commit/full_page_writes off, Redis without
# persistence) and with --durable (PostgreSQL's defaults, Redis appendonly
# yes, appendfsync everysec). Then prints the tour table for the README.
#
#   scripts/regenerate-results.sh                 # the full run (minutes)
#   OUT=/tmp/r BUYERS=100 TICKETS=10 DURATION=1 CONCURRENCY=8 LEVELS=0,4 \
#     PROFILE=dev scripts/regenerate-results.sh   # a small check that it works
#
# Every report directory holds index.html, the JSON behind it and the
# machine and settings it was measured on. Exit status: 0 every row as
# expected; 1 a row was unexpected (the reports are still written); 2 the
# tool failed.
set -eu

cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results}
BUYERS=${BUYERS:-1000}
TICKETS=${TICKETS:-100}
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-64}
LEVELS=${LEVELS:-}

# PROFILE=dev builds faster, for a small check; figures come from release.
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
    cargo build --release -p load
    LOAD=target/release/load
else
    cargo build -p load
    LOAD=target/debug/load
fi
# The services are throwaway ones the tool starts with the settings asked
# for: a URL in the environment would measure someone else's server.
unset DATABASE_URL REDIS_URL

levels=""
if [ -n "$LEVELS" ]; then levels="--levels $LEVELS"; fi

status=0
run() {
    name=$1
    shift
    echo "== $name: load tour $*" >&2
    # shellcheck disable=SC2086 # $levels is empty or two words on purpose
    "$LOAD" tour $levels --buyers "$BUYERS" --tickets "$TICKETS" "$@" \
        --report "$OUT/$name" >"$OUT/$name.txt" || code=$?
    code=${code:-0}
    case $code in
        0) ;;
        1) echo "== $name: a row was not as expected (see $OUT/$name.txt)" >&2; status=1 ;;
        *) echo "== $name: the tool failed (exit $code)" >&2; exit "$code" ;;
    esac
    unset code
}

mkdir -p "$OUT"
run tour
run tour-durable --durable
run sustained --duration "$DURATION" --concurrency "$CONCURRENCY"
run sustained-durable --durable --duration "$DURATION" --concurrency "$CONCURRENCY"

echo "== the README's tour table ($OUT/tour.txt):" >&2
echo '```text'
cat "$OUT/tour.txt"
echo '```'
exit "$status"
