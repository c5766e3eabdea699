#!/usr/bin/env bash
# Instructions per answer of one or more popgw builds, counted by valgrind's callgrind
# (issue 28: this VM has no hardware counters and its throughput swings by a third between
# runs of the same binary, which hides any change worth a few per cent; an instruction count
# does not swing):
#
#   benches/instructions.sh BINARY...
#
# A BINARY given as `baseline` counts `popgw-bench baseline` instead (bare tonic + rustls
# with popgw's TLS configuration and a fixed reply: what the shared stack costs).
#
# Each binary serves in turn under `valgrind --tool=callgrind` on the same folder (the dev
# PKI, the demo population and an fsynced, sealed audit log made by the first start, the
# demo clients' rate limits lifted); `popgw-bench loadgen` warms its cache (POPGW_BENCH_PEOPLE,
# default 500, ids read until each has been), then callgrind counts the whole process —
# every thread, the audit writer's included — over POPGW_BENCH_CALLS (default 4,000)
# cache-hit VerifyIdentity calls from 64 callers on 4 connections. Under valgrind the
# server is always the bottleneck, so its audit batches are full, as at saturation.
# Prints instructions per answer for each binary and writes target/bench-instructions/
# (callgrind's files: `callgrind_annotate FILE` shows where they go). Needs valgrind
# (`apt-get install valgrind`). Instructions are not time (a cache miss or a system call's
# wait is not counted): the figure compares builds' work, not their speed.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: benches/instructions.sh BINARY..." >&2; exit 2; }
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROOT=$PWD
CALLS=${POPGW_BENCH_CALLS:-4000}
PEOPLE=${POPGW_BENCH_PEOPLE:-500}
BINS=()
for b in "$@"; do
    if [ "$b" = baseline ]; then BINS+=(baseline); continue; fi
    [ -x "$b" ] || { echo "$b is not an executable popgw" >&2; exit 2; }
    BINS+=("$(realpath "$b")")
done
cargo build --release --quiet --bin popgw-bench
BENCH=$ROOT/target/release/popgw-bench
OUT=$ROOT/target/bench-instructions
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$(mktemp -d "$ROOT/target/bench-work.XXXXXX")
GW=127.0.0.1:27051
ADMIN=127.0.0.1:27464
G=
cleanup() {
    [ -n "$G" ] && kill "$G" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# serve NAME [valgrind args...] BINARY: starts it on $WORK; waits until it serves.
serve() {
    local name=$1
    shift
    if [ "${!#}" = baseline ]; then
        (cd "$WORK" && exec "${@:1:$#-1}" "$BENCH" baseline --dir . --listen "$GW" \
            >"$OUT/$name.log" 2>&1) &
    else
        (cd "$WORK" && exec "$@" serve --listen "$GW" --admin-listen "$ADMIN" >"$OUT/$name.log" 2>&1) &
    fi
    G=$!
    for _ in $(seq 1200); do
        kill -0 "$G" 2>/dev/null || { echo "$name exited: see $OUT/$name.log" >&2; exit 1; }
        grep -q '^popgw serving\|^baseline listening' "$OUT/$name.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$name does not serve after 120 s" >&2
    exit 1
}
halt() {
    kill -INT "$G" 2>/dev/null || true
    wait "$G" 2>/dev/null || true
    G=
}
load() { # loadgen flags...
    "$BENCH" loadgen --addr "$GW" --dir "$WORK" --people "$PEOPLE" --warmup-secs 0 \
        --callers 64 --connections 4 "$@" >/dev/null 2>>"$OUT/loadgen.log"
}

# The folder (dev PKI, demo population, audit log) is made by a popgw's first start.
FIRST=
for b in "${BINS[@]}"; do [ "$b" = baseline ] || { FIRST=$b; break; }; done
[ -n "$FIRST" ] || { echo "name at least one popgw build (the baseline needs its folder)" >&2; exit 2; }
serve first "$FIRST"
halt
sed -i -E 's#^identity = "spiffe://popgw.dev/(portal/dvcqg|ministry/justice)"$#&\nrate_per_second = 1000000\nburst = 1000000#' \
    "$WORK/data/policy.toml"

echo "| binary | answers counted | instructions | per answer |" >"$OUT/report.md"
echo "|---|---|---|---|" >>"$OUT/report.md"
i=0
for b in "${BINS[@]}"; do
    i=$((i + 1))
    file=$OUT/callgrind.$i.out
    serve "run-$i" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" "$b"
    # Every id of the first $PEOPLE read (~7 draws per id), collection off.
    load --secs 600 --max-calls $((PEOPLE * 8))
    callgrind_control -i on "$G" >/dev/null
    load --secs 600 --max-calls "$CALLS" --label "run-$i" --json "$OUT/run-$i.json"
    callgrind_control -i off "$G" >/dev/null
    halt
    ok=$(python3 -c "import json; print(json.load(open('$OUT/run-$i.json'))['ok'])")
    ir=$(grep -h '^totals:' "$file"* | awk '{ s += $2 } END { print s }')
    per=$(python3 -c "print(round($ir / $ok))")
    echo "| \`$b\` | $ok | $ir | **$per** |" >>"$OUT/report.md"
    echo "$b: $per instructions per answer ($ok answers)"
done
cat "$OUT/report.md"
