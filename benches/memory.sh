#!/usr/bin/env bash
# What an open connection and an open call cost popgw's memory (issue 28):
#
#   benches/memory.sh
#
# The release gateway serves on its demo defaults (first start in a fresh folder),
# pinned to core 0, warmed by 3 s of load. `popgw-bench hold` (its own process, core 1)
# then holds, in turn, POPGW_MEM_CLIENTS (16) x 60 idle mutual-TLS HTTP/2 connections
# (60 per identity: popgw admits 64 per identity; the identities are issued by the
# development CA and are not in the policy — an idle connection makes no call), and
# 10 connections as the portal with 100 VerifyIdentity calls each whose headers are sent
# and whose body is not (the state of a call from its first frame to its message; popgw
# drops such a call after limits.body_timeout_ms, 5 s, and charges each 16 KiB to the
# client's 16 MiB budget: 1,000 fit, 1,025 would not), on a gateway started afresh. The
# gateway's resident memory (VmRSS) is read before and 1 s after each is in place. Writes
# target/bench-memory/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=${POPGW_MEM_CLIENTS:-16}
PER=60
CALL_CONNS=10
CALLS=100
[ "$(nproc)" -ge 2 ] || { echo "memory.sh needs two cores" >&2; exit 1; }
cargo build --release --quiet --bin popgw --bin popgw-bench
POPGW=$ROOT/target/release/popgw
BENCH=$ROOT/target/release/popgw-bench
OUT=$ROOT/target/bench-memory
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$(mktemp -d "$ROOT/target/bench-work.XXXXXX")
GW=127.0.0.1:27151
ADMIN=127.0.0.1:27564
G=
H=
cleanup() {
    [ -n "$H" ] && kill "$H" 2>/dev/null
    [ -n "$G" ] && kill "$G" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# start: the gateway on $WORK pinned to core 0 (the first start makes the demo folder),
# the portal's rate limit lifted, 3 s of load to warm it.
start() {
    (cd "$WORK" && exec taskset -c 0 "$POPGW" serve --listen "$GW" --admin-listen "$ADMIN" \
        >>"$OUT/serve.log" 2>&1) &
    G=$!
    for _ in $(seq 600); do
        kill -0 "$G" 2>/dev/null || { echo "popgw exited: see $OUT/serve.log" >&2; exit 1; }
        [ "$(grep -c '^popgw serving' "$OUT/serve.log" 2>/dev/null)" -ge "$1" ] && break
        sleep 0.1
    done
    if ! grep -q 'rate_per_second = 1000000' "$WORK/data/policy.toml"; then
        # The policy is read again within a second of a change.
        sed -i -E 's#^identity = "spiffe://popgw.dev/portal/dvcqg"$#&\nrate_per_second = 1000000\nburst = 1000000#' \
            "$WORK/data/policy.toml"
        sleep 2
    fi
    taskset -c 1 "$BENCH" loadgen --addr "$GW" --dir "$WORK" --secs 3 --warmup-secs 1 \
        >/dev/null 2>>"$OUT/loadgen.log"
    sleep 2
}
stop() {
    kill "$G" 2>/dev/null || true
    wait "$G" 2>/dev/null || true
    G=
}

start 1
for i in $(seq "$CLIENTS"); do
    (cd "$WORK" && "$POPGW" certs issue --name "idle$i" --uri "spiffe://popgw.dev/portal/idle$i" >/dev/null)
done

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$G/status"; } # KiB

# hold LABEL ARGS...: prints "before after" (KiB) around what `popgw-bench hold ARGS` holds.
hold() {
    local label=$1
    shift
    local before
    before=$(rss)
    taskset -c 1 "$BENCH" hold --addr "$GW" --certs "$WORK/certs" "$@" >"$OUT/$label.out" 2>&1 &
    H=$!
    for _ in $(seq 600); do
        grep -q '^holding' "$OUT/$label.out" 2>/dev/null && break
        kill -0 "$H" 2>/dev/null || { echo "hold $label failed: $(cat "$OUT/$label.out")" >&2; exit 1; }
        sleep 0.1
    done
    sleep 1
    local after
    after=$(rss)
    kill -INT "$H"
    wait "$H" 2>/dev/null || true
    H=
    sleep 6
    echo "$before $after"
}

names=$(seq -f 'idle%g' -s, "$CLIENTS")
read -r idle_before idle_after < <(hold idle --clients "$names" --connections "$PER")
# A fresh gateway for the calls: memory the connections gave back stays with the
# allocator and would be reused, hiding what the calls take.
stop
start 2
read -r calls_before calls_after < <(hold calls --clients portal --connections "$CALL_CONNS" --calls "$CALLS")
conns=$((CLIENTS * PER))
calls=$((CALL_CONNS * CALLS))
python3 - "$OUT/report.md" "$conns" "$idle_before" "$idle_after" "$CALL_CONNS" "$calls" \
    "$calls_before" "$calls_after" "$(cat "$OUT/idle.out")" "$(cat "$OUT/calls.out")" <<'PY'
import sys
out, conns, ib, ia, cc, calls, cb, ca, idle_line, calls_line = sys.argv[1:]
conns, ib, ia, cc, calls, cb, ca = map(int, (conns, ib, ia, cc, calls, cb, ca))
per_conn = (ia - ib) / conns
per_call = (ca - cb - cc * per_conn) / calls
text = f"""# popgw memory: connections and calls held open

| held | popgw RSS before (KiB) | with them (KiB) | per item |
|---|---|---|---|
| {conns} idle mutual-TLS HTTP/2 connections ({idle_line}) | {ib} | {ia} | **{per_conn:.1f} KiB per connection** |
| {calls} calls without their body on {cc} connections ({calls_line}) | {cb} | {ca} | **{per_call:.2f} KiB per call** (the {cc} connections' share taken off) |
"""
open(out, "w").write(text)
print(text)
PY
