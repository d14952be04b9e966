#!/usr/bin/env bash
# Storage benchmarks against fio on the same disk.
#
# Usage: scripts/bench-storage.sh [DIR]
#
#   DIR                 a directory on the disk under test (default ./target/bench-storage)
#   BENCH_SIZE          bytes per run in fio syntax (default 2G)
#   FLUMEN_BENCH_BYTES  bytes per Flumen run (default: BENCH_SIZE in bytes)
#
# Each Flumen benchmark runs right after the fio job it is compared with, in the same
# directory, both pinned to CPU 0. The table gives both bandwidths, their ratio and the
# target ratio. See benches/storage.rs for what each benchmark measures.
set -euo pipefail
shopt -s inherit_errexit

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DIR="${1:-./target/bench-storage}"
SIZE="${BENCH_SIZE:-2G}"
BYTES="${FLUMEN_BENCH_BYTES:-$(numfmt --from=iec "$SIZE")}"
FIO_FILE="$DIR/fio-bench.dat"

install_fio() {
    command -v fio >/dev/null && return
    local sudo=""
    [[ $EUID -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y fio || { $sudo apt-get update && $sudo apt-get install -y fio; }
}

# Builds the benchmark (release) and prints the path of its executable.
build_bench() {
    cargo bench --bench storage --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "storage" \
            and message.get("executable"):
        print(message["executable"])
'
}

print_machine() {
    echo "cpu:        $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "nproc:      $(nproc)"
    echo "kernel:     $(uname -r)"
    echo "filesystem: $(df -T "$DIR" | awk 'NR == 2 { print $2 " on " $1 }')"
    echo "directory:  $(cd "$DIR" && pwd)"
    echo "size:       fio $SIZE, flumen $BYTES bytes"
    echo
}

# fio_mibps RW ARGS...: runs one fio job on $FIO_FILE and prints its bandwidth in MiB/s.
fio_mibps() {
    local rw="$1"
    shift
    local json
    json=$(taskset -c 0 fio --name=w --filename="$FIO_FILE" --rw="$rw" --bs=1M --direct=1 \
        --ioengine=io_uring --size="$SIZE" --output-format=json "$@")
    rm -f "$FIO_FILE"
    local direction=write
    [[ $rw == read ]] && direction=read
    python3 -c '
import json, sys
print("%.1f" % (json.load(sys.stdin)["jobs"][0][sys.argv[1]]["bw_bytes"] / 2**20))
' "$direction" <<<"$json"
}

# flumen MODE: runs one mode of the benchmark and prints its name=value lines.
flumen() {
    FLUMEN_BENCH_CPU=0 FLUMEN_BENCH_DIR="$DIR" FLUMEN_BENCH_BYTES="$BYTES" \
        taskset -c 0 "$BENCH" "$1"
}

# metric NAME OUTPUT: the value of NAME=value in OUTPUT.
metric() {
    grep -oE "(^| )$1=[^ ]+" <<<"$2" | head -n1 | cut -d= -f2
}

# row NAME FLUMEN FIO TARGET: one line of the table; TARGET "-" marks an informative row.
row() {
    local name="$1" ours="$2" theirs="$3" target="$4"
    awk -v name="$name" -v ours="$ours" -v theirs="$theirs" -v target="$target" 'BEGIN {
        ratio = ours / theirs
        verdict = target == "-" ? "(info)" : (ratio >= target ? "ok" : "BELOW TARGET")
        printf "%-34s %12.1f %12.1f %8.3f %8s  %s\n", name, ours, theirs, ratio,
            (target == "-" ? "-" : ">= " target), verdict
    }'
}

install_fio
mkdir -p "$DIR"
echo "building the benchmark..." >&2
BENCH="$(build_bench)"
[[ -x $BENCH ]] || { echo "benchmark executable not found" >&2; exit 1; }
print_machine

echo "running append (no fsync)..." >&2
# Both sides include a final sync: the storage figure ends with a flush.
fio_append=$(fio_mibps write --iodepth=8 --end_fsync=1)
out_append=$(flumen append)
echo "running append + flush..." >&2
fio_fsync=$(fio_mibps write --iodepth=1 --fdatasync=1)
out_fsync=$(flumen append-fsync)
echo "running cold read..." >&2
fio_read=$(fio_mibps read --iodepth=8)
out_read=$(flumen read)
echo "running group commit..." >&2
out_group=$(flumen group-commit)

printf "%-34s %12s %12s %8s %8s\n" "benchmark" "flumen MiB/s" "fio MiB/s" "ratio" "target"
row "append, no fsync (+ final flush)" "$(metric append_nofsync_MiBps "$out_append")" \
    "$fio_append" 0.85
row "append + flush per ~1 MiB" "$(metric append_fsync_MiBps "$out_fsync")" "$fio_fsync" 0.80
row "cold read, 1 MiB reads" "$(metric read_cold_MiBps "$out_read")" "$fio_read" 0.80
row "append, no fsync, appends only" "$(metric append_nofsync_appends_only_MiBps "$out_append")" \
    "$fio_append" -
echo
echo "append, no fsync: final flush $(metric append_final_flush_ms "$out_append") ms;" \
    "wall clock incl. batch copies $(metric append_nofsync_wall_MiBps "$out_append") MiB/s"
echo "cold read: $(metric read_cold_device_reads "$out_read") device reads," \
    "$(metric read_cold_device_bytes_read "$out_read") bytes read for" \
    "$(metric read_cold_bytes "$out_read") returned in $(metric read_cold_calls "$out_read") calls"
echo "append + flush: $(metric append_fsync_fdatasyncs "$out_fsync") fdatasyncs," \
    "mean latency $(metric append_fsync_mean_latency_us "$out_fsync") us"
echo "group commit (8 tasks, ~64 KiB batches, flush after each):" \
    "$(metric group_commit_batches_per_s "$out_group") batches/s," \
    "$(metric group_commit_fdatasyncs_per_s "$out_group") fdatasyncs/s," \
    "$(metric group_commit_MiBps "$out_group") MiB/s"
echo

echo "codec (criterion):"
taskset -c 0 "$BENCH" codec
