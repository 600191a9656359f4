#!/usr/bin/env bash
# Regenerates every figure of docs/09-single-writer.md's "Measured" section
# in one go, from a release build, with the machine's load before and after
# (read the figures as ratios within one table: a shared machine moves the
# absolutes). Settings: the load tool's throwaway PostgreSQL (fsync=off,
# synchronous_commit=off, full_page_writes=off) and Redis (no persistence).
#
#   scripts/level6-figures.sh [OUT]      (default: target/level6-figures.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/level6-figures.txt}"
cargo build --release -p load -p level6
{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) cores"
    echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo '$ level6 takeover --buyers 1000,10000,100000,300000 --repeat 3'
    target/release/level6 takeover --buyers 1000,10000,100000,300000 --repeat 3
    echo '$ load tour --levels 2,4,6 --think-time-ms 0'
    target/release/load tour --levels 2,4,6 --think-time-ms 0
    echo '$ load tour --levels 2,4,6 --think-time-ms 0 --duration 5 --concurrency 64'
    target/release/load tour --levels 2,4,6 --think-time-ms 0 --duration 5 --concurrency 64
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$out"
