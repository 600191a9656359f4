#!/bin/sh
# Peak memory of the servers at 10,000 buyers, on every level, and in the
# booking scenario: the figures of docs/results.md's "Memory" section.
#
#   scripts/memory-table.sh                    # levels 0-6 and booking
#   LEVELS="1 4" BUYERS=2000 scripts/memory-table.sh
#
# A rush's peak is read by the load tool itself (VmHWM of each server it
# started, in its --json report: `memory`). `load booking` reports none, so
# its servers (the `load serve` children of the booking run) are read from
# /proc/<pid>/status while it runs: VmHWM only grows, so the last reading
# before a server exits is its peak. LOAD names a load binary to use
# instead of building this checkout's. Prints one line per level.
set -eu

cd "$(dirname "$0")/.."
BUYERS=${BUYERS:-10000}
LEVELS=${LEVELS:-0 1 2 3 4 5 6}
if [ -z "${LOAD:-}" ]; then
    cargo build --release -p load >&2
    LOAD=target/release/load
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
for level in $LEVELS; do
    if [ "$level" = 5 ]; then
        continue # Level 5 sells seats: its row is the booking scenario below
    fi
    "$LOAD" run --level "$level" --servers 2 --buyers "$BUYERS" --json --expect any \
        | python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
m = r.get("memory") or {}
servers = ", ".join(f"{x:.0f}" for x in m.get("servers_peak_rss_mib", []))
print(f"level {r[\"level\"]} {r[\"strategy\"]:<12} {r[\"buyers\"]} buyers: servers {servers} MiB  load {m.get(\"load_peak_rss_mib\", 0):.0f} MiB  ({r[\"verdict\"]}, p99 {r[\"latency_ms\"][\"p99\"]:.0f} ms)")
'
done

case " $LEVELS " in
*" 5 "*)
    out=$(mktemp /tmp/memory-booking.XXXXXX)
    "$LOAD" booking --users "$BUYERS" --servers 2 >"$out" 2>&1 &
    booking=$!
    peaks=""
    while kill -0 "$booking" 2>/dev/null; do
        for child in $(pgrep -P "$booking" -x load 2>/dev/null); do
            kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$child/status" 2>/dev/null || true)
            [ -n "$kib" ] && peaks="$peaks $child:$kib"
        done
        sleep 0.5
    done
    wait "$booking" || true
    echo "$peaks" | tr ' ' '\n' | awk -F: -v users="$BUYERS" '
        NF == 2 { if ($2 > peak[$1]) peak[$1] = $2 }
        END {
            line = ""
            for (p in peak) line = line sprintf("%s%.0f", line == "" ? "" : ", ", peak[p] / 1024)
            print "level 5 booking      " users " users: servers " line " MiB (load serve children)"
        }'
    grep -i "verdict\|p99" "$out" | head -3 || true
    rm -f "$out"
    ;;
esac
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
