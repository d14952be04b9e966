#!/usr/bin/env bash
# Consumer-group costs on one in-process broker: rebalance times for 10 members on 100
# partitions (range and cooperative-sticky) and durable offset commits per second.
# The whole process (broker and load) is pinned to CPU 0 and 1. Usage: scripts/bench-groups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "nproc:  $(nproc)   kernel: $(uname -r)"
cargo bench --bench groups --no-run >/dev/null 2>&1
TMPDIR="${TMPDIR:-/tmp}" taskset -c 0,1 cargo bench --bench groups -- run
