#!/usr/bin/env bash
# Two builds of popgw measured in alternation (issue 28: this machine's run-to-run spread
# is large, so only paired figures count):
#
#   benches/paired.sh OLD_BINARY NEW_BINARY [PAIRS]
#
# Each binary serves in turn on the same folder (the dev PKI, demo population and an
# fsynced, sealed audit log made by the first start), pinned to core 0; the load
# generator (`popgw-bench loadgen`, its own process) runs pinned to core 1: cache-hit
# VerifyIdentity, 64 callers on 4 connections, then one caller, POPGW_BENCH_SECS (default
# 10) seconds each after 2 s of warm-up. PAIRS (default 3) rounds of old, new. Writes
# target/bench-paired/report.md (and each run's JSON). POPGW_BENCH_CALLERS and
# POPGW_BENCH_CONNECTIONS change the closed loop's 64 callers on 4 connections (256 on 8
# keep the server's core saturated: what a change of CPU per request shows in);
# POPGW_BENCH_CONNECT=N replaces the closed loop with N callers each opening a new
# mutual-TLS connection per call (what a change of the handshake shows in).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: benches/paired.sh OLD_BINARY NEW_BINARY [PAIRS]" >&2; exit 2; }
cd "$(dirname "$0")/.."
ROOT=$PWD
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-3}
SECS=${POPGW_BENCH_SECS:-10}
CALLERS=${POPGW_BENCH_CALLERS:-64}
CONNECTIONS=${POPGW_BENCH_CONNECTIONS:-4}
LOOP=(--callers "$CALLERS" --connections "$CONNECTIONS")
[ -n "${POPGW_BENCH_CONNECT:-}" ] && LOOP=(--connect --callers "$POPGW_BENCH_CONNECT")
for b in "$OLD" "$NEW"; do
    [ -x "$b" ] || { echo "$b is not an executable popgw" >&2; exit 2; }
done
[ "$(nproc)" -ge 2 ] || { echo "paired.sh needs two cores" >&2; exit 1; }
cargo build --release --quiet --bin popgw-bench
BENCH=$ROOT/target/release/popgw-bench
OUT=$ROOT/target/bench-paired
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

# serve NAME BINARY: starts BINARY on $WORK pinned to core 0; waits until it serves.
serve() {
    (cd "$WORK" && exec taskset -c 0 "$2" serve --listen "$GW" --admin-listen "$ADMIN" \
        >"$OUT/$1.log" 2>&1) &
    G=$!
    for _ in $(seq 600); do
        kill -0 "$G" 2>/dev/null || { echo "$1 exited: see $OUT/$1.log" >&2; exit 1; }
        grep -q '^popgw serving' "$OUT/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 does not serve after 60 s" >&2
    exit 1
}
halt() {
    kill "$G" 2>/dev/null || true
    wait "$G" 2>/dev/null || true
    G=
}
load() {
    local name=$1
    shift
    taskset -c 1 "$BENCH" loadgen --addr "$GW" --dir "$WORK" --secs "$SECS" --warmup-secs 2 \
        --server-pid "$G" --label "$name" --json "$OUT/$name.json" "$@" \
        >/dev/null 2>>"$OUT/loadgen.log" ||
        { echo "loadgen $name failed:" >&2; tail -n 5 "$OUT/loadgen.log" >&2; exit 1; }
    tail -n 1 "$OUT/loadgen.log"
}

serve first "$OLD"
halt
# The demo clients' rate limits lifted (as in compare.sh).
sed -i -E 's#^identity = "spiffe://popgw.dev/(portal/dvcqg|ministry/justice)"$#&\nrate_per_second = 1000000\nburst = 1000000#' \
    "$WORK/data/policy.toml"
for i in $(seq "$PAIRS"); do
    for side in old new; do
        bin=$OLD
        [ $side = new ] && bin=$NEW
        serve "$side-$i" "$bin"
        load "$side-$i-warmup" --secs 4
        load "$side-$i-closed" "${LOOP[@]}"
        load "$side-$i-one" --callers 1 --connections 1
        halt
    done
done

python3 - "$OUT" "$PAIRS" "$OLD" "$NEW" <<'EOF'
import json, os, platform, sys
out, pairs, old, new = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def run(name):
    return json.load(open(os.path.join(out, name + ".json")))
lines = [f"# Paired runs: old `{old}`, new `{new}`", "",
         f"{platform.node()}, {os.cpu_count()} cores; server on core 0, generator on core 1; "
         + (f"a new connection per call, {os.environ['POPGW_BENCH_CONNECT']} callers." if os.environ.get('POPGW_BENCH_CONNECT') else
            f"closed loop: {os.environ.get('POPGW_BENCH_CALLERS', '64')} callers on {os.environ.get('POPGW_BENCH_CONNECTIONS', '4')} connections."), "",
         "| pair | old ok/s | new ok/s | new/old | old p99 ms | new p99 ms | old 1-caller p50 ms | new 1-caller p50 ms |",
         "|---|---|---|---|---|---|---|---|"]
ratios = []
for i in range(1, pairs + 1):
    o, n = run(f"old-{i}-closed"), run(f"new-{i}-closed")
    o1, n1 = run(f"old-{i}-one"), run(f"new-{i}-one")
    r = n["throughput"] / o["throughput"]
    ratios.append(r)
    ms = lambda rep, q: rep["latency_us"][q] / 1000
    lines.append(f"| {i} | {o['throughput']:.0f} | {n['throughput']:.0f} | {r:.3f} | "
                 f"{ms(o, 'p99'):.2f} | {ms(n, 'p99'):.2f} | {ms(o1, 'p50'):.3f} | {ms(n1, 'p50'):.3f} |")
lines += ["", f"new/old throughput, each pair: {', '.join(f'{r:.3f}' for r in ratios)}"]
open(os.path.join(out, "report.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
