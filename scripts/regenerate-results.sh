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
# machine and settings it was measured on. $OUT/side-by-side.md puts the
# fast and the durable figures next to each other (what docs/results.md
# shows), headed by when, at which commit and under what machine load they
# were measured: run it on a quiet machine (a load average near 0), since
# other work on the same cores moves every figure. Exit status: 0 every row
# as expected; 1 a row was unexpected (the reports are still written); 2
# the tool failed.
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

# Joins a fast and a durable table (the text `load tour` prints) on level,
# strategy and servers: verdicts, rates, the durable/fast ratio, medians.
# $3 is `tour` (req/s of a sell-out) or `sustained` (sales/s); the ceilings
# of a sustained tour follow its rows.
side_by_side() {
    awk -v kind="$3" '
        FNR == 1 { file++ }
        $1 ~ /^[0-9]+$/ && NF >= 9 {
            key = $1 " | " $2 " | " $3
            if (kind == "tour") { v = $6; r = $14; p = $11 } else { v = $4; r = $5; p = $8 }
            if (file == 1) { keys[++n] = key; fv[key] = v; fr[key] = r; fp[key] = p }
            else { dv[key] = v; dr[key] = r; dp[key] = p }
        }
        $3 == "ops/s" {
            if (file == 1) { ceil[++m] = $1; fc[$1] = $2 } else { dc[$1] = $2 }
        }
        function ratio(d, f) { return (f > 0 && d != "") ? sprintf("%.2f", d / f) : "" }
        END {
            rate = (kind == "tour") ? "req/s" : "sales/s"
            print "| level | strategy | servers | verdict fast | verdict durable | " rate " fast | " rate " durable | durable / fast | p50 ms fast | p50 ms durable |"
            print "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"
            for (i = 1; i <= n; i++) {
                k = keys[i]
                print "| " k " | " fv[k] " | " dv[k] " | " fr[k] " | " dr[k] " | " ratio(dr[k], fr[k]) " | " fp[k] " | " dp[k] " |"
            }
            if (m > 0) {
                print ""
                print "| ceiling | ops/s fast | ops/s durable | durable / fast |"
                print "| --- | ---: | ---: | ---: |"
                for (i = 1; i <= m; i++) {
                    c = ceil[i]
                    print "| " c " | " fc[c] " | " dc[c] " | " ratio(dc[c], fc[c]) " |"
                }
            }
        }
    ' "$1" "$2"
}

mkdir -p "$OUT"
# When, what and how busy: the machine's load average before the first run
# (1, 5 and 15 minutes; compare it with the number of cores).
measured="measured $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, load average before the run $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $measured" >&2
run tour
run tour-durable --durable
run sustained --duration "$DURATION" --concurrency "$CONCURRENCY"
run sustained-durable --durable --duration "$DURATION" --concurrency "$CONCURRENCY"

{
    echo "Fast (PostgreSQL fsync/synchronous_commit/full_page_writes off, Redis"
    echo "without persistence) and durable (\`--durable\`: PostgreSQL's defaults,"
    echo "Redis appendonly yes, appendfsync everysec), $measured."
    echo
    echo "Sell-out, $BUYERS buyers for $TICKETS tickets (\`load tour\` and \`load tour --durable\`):"
    echo
    side_by_side "$OUT/tour.txt" "$OUT/tour-durable.txt" tour
    echo
    echo "Sustained, $CONCURRENCY buyers for $DURATION s (\`load tour --duration $DURATION --concurrency $CONCURRENCY\`, and \`--durable\`):"
    echo
    side_by_side "$OUT/sustained.txt" "$OUT/sustained-durable.txt" sustained
    # CPU per sale by process and the ratio to each strategy's floor (the
    # table `load tour --duration` prints after its ceilings).
    for name in sustained sustained-durable; do
        echo
        echo "CPU per sale, $name (from $OUT/$name.txt):"
        echo
        echo '```text'
        sed -n '/^CPU per sale/,/^$/p' "$OUT/$name.txt"
        echo '```'
    done
} >"$OUT/side-by-side.md"
echo "== fast and durable side by side: $OUT/side-by-side.md" >&2

echo "== the README's tour table ($OUT/tour.txt):" >&2
echo '```text'
cat "$OUT/tour.txt"
echo '```'
exit "$status"
