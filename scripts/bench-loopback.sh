#!/usr/bin/env bash
# Produce and consume throughput over loopback, next to iperf3 measured in the same run.
# The broker runs with one shard pinned to CPU 0; iperf3's client and the load run on
# CPU 1. Usage: scripts/bench-loopback.sh [DATA_DIR]   (env: SECONDS_PER_MODE, CONNECTIONS)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-./target/bench-loopback}"
PORT=19092
SECONDS_PER_MODE="${SECONDS_PER_MODE:-10}"
CONNECTIONS="${CONNECTIONS:-4}"

command -v iperf3 >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3; }
cargo build --release --bin flumen
BENCH=$(cargo bench --bench loopback --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loopback" and m.get("executable"):
        print(m["executable"])' | tail -n1)

echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "nproc:  $(nproc)   kernel: $(uname -r)"

iperf3 -s -A 0 -p 15201 -1 >/dev/null 2>&1 &
sleep 0.5
IPERF=$(iperf3 -c 127.0.0.1 -p 15201 -A 1 -t 5 -J | python3 -c 'import json,sys; print("%.1f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8 / 2**20))')

rm -rf "$DIR" && mkdir -p "$DIR"
taskset -c 0 target/release/flumen broker --shards 1 --listen 127.0.0.1:$PORT --data-dir "$DIR" --log-level warn &
BROKER=$!
trap 'kill $BROKER 2>/dev/null; wait $BROKER 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done

OUT=$(FLUMEN_BENCH_BOOTSTRAP=127.0.0.1:$PORT FLUMEN_BENCH_SECONDS=$SECONDS_PER_MODE \
  FLUMEN_BENCH_CONNECTIONS=$CONNECTIONS taskset -c 1 "$BENCH" run)
metric() { grep -oE "^$1=[^ ]+" <<<"$OUT" | cut -d= -f2; }
printf '\n%-28s %12s %12s %8s\n' benchmark "flumen MiB/s" "iperf3 MiB/s" ratio
for name in produce_acks1 produce_acksall consume producer_acks1; do
  value=$(metric "${name}_MiBps")
  printf '%-28s %12s %12s %8s\n' "$name" "$value" "$IPERF" "$(python3 -c "print('%.3f' % ($value / $IPERF))")"
done
echo
taskset -c 1 "$BENCH" accumulator
