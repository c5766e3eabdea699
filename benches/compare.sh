#!/usr/bin/env bash
# popgw against the limit of its stack, in one command (issue 17):
#
#   benches/compare.sh
#
# Builds the release binary, then runs every server pinned to core 0 and the load
# generator (`popgw-bench loadgen`, its own process) pinned to core 1:
#   1. popgw on its zero-config defaults (fsynced, sealed audit; cache hits after a
#      warm-up pass) — closed loop (64 callers on 4 connections), one caller, the Zipf
#      mix, new connections per second, an open loop at half its saturated rate;
#   2. the baseline (`popgw-bench baseline`: bare tonic + rustls with popgw's TLS
#      configuration, fixed replies) — the same five (the open loop at popgw's rate:
#      the generator's own floor);
#   2b. nginx `grpc_pass` with mutual TLS in front of the baseline (Debian's nginx, installed
#      when missing and the script runs as root; both on core 0) — closed loop and one caller;
#   3. popgw with every lookup a cache miss through `popgw registry serve` with 1 ms
#      injected latency (the registry shares core 1 with the generator);
#   4. one fdatasync on the work folder's disk (benches/fdatasync.py), and the audit log's
#      durable, sealed records per second (`cargo bench -p popgw-benches --bench audit`,
#      both cores).
# Writes target/bench-report/report.md and report.json (and each run's JSON).
#
# POPGW_BENCH_SECS (default 10) seconds measured per run, after 2 s of warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${POPGW_BENCH_SECS:-10}
OUT=$ROOT/target/bench-report
SERVER_CORE=0
GEN_CORE=1
if [ "$(nproc)" -lt 2 ]; then
    echo "compare.sh needs two cores (one for the server, one for the generator)" >&2
    exit 1
fi
command -v taskset >/dev/null || { echo "compare.sh needs taskset (util-linux)" >&2; exit 1; }

cargo build --release --quiet --bin popgw --bin popgw-bench
BIN=$ROOT/target/release/popgw
BENCH=$ROOT/target/release/popgw-bench
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$(mktemp -d "$ROOT/target/bench-work.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Below the ephemeral range (32768+): probing a port there that nothing listens on yet can
# connect the probe to itself (TCP simultaneous open) and look like a listener.
GW=127.0.0.1:27051
BASE=127.0.0.1:27071
NGX=127.0.0.1:27081
REG=127.0.0.1:27061

# wait_port ADDR: until the server just started ($STARTED) listens on ADDR.
wait_port() {
    local port=${1##*:}
    for _ in $(seq 600); do
        # A server that exited (say, its port was taken) must not be measured by proxy.
        kill -0 "$STARTED" 2>/dev/null || { echo "the server on $1 exited: see $OUT/*.log" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1 after 60 s" >&2
    exit 1
}
# wait_serving NAME: until the gateway started as NAME says it serves. Its port accepts
# connections earlier (it is bound before the audit log is opened), and a first start
# stopped then would leave a signing key without a log.
wait_serving() {
    for _ in $(seq 600); do
        kill -0 "$STARTED" 2>/dev/null || { echo "$1 exited: see $OUT/$1.log" >&2; exit 1; }
        grep -q '^popgw serving' "$OUT/$1.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 does not serve after 60 s: see $OUT/$1.log" >&2
    exit 1
}
# start NAME CORE COMMAND...: starts a server in $WORK pinned to CORE; its pid in $STARTED.
start() {
    local name=$1 core=$2
    shift 2
    local port
    for port in 27051 27071 27061 27081 27464; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && [[ "$*" == *":$port"* ]]; then
            echo "port $port is already taken: stop what listens there" >&2
            exit 1
        fi
    done
    (cd "$WORK" && exec taskset -c "$core" "$@" >"$OUT/$name.log" 2>&1) &
    STARTED=$!
    PIDS+=("$STARTED")
}
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local kept=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}
# load NAME ADDR SERVER_PID [loadgen flags...]
load() {
    local name=$1 addr=$2 pid=$3
    shift 3
    taskset -c "$GEN_CORE" "$BENCH" loadgen --addr "$addr" --dir "$WORK" --secs "$SECS" \
        --warmup-secs 2 --server-pid "$pid" --label "$name" --json "$OUT/$name.json" "$@" \
        >/dev/null 2>>"$OUT/loadgen.log" ||
        { echo "loadgen $name failed:" >&2; tail -n 5 "$OUT/loadgen.log" >&2; exit 1; }
    tail -n 1 "$OUT/loadgen.log"
}

# The gateway's first start creates the dev PKI, policy and demo population in $WORK.
start gateway-first "$SERVER_CORE" "$BIN" serve --listen "$GW" --admin-listen 127.0.0.1:27464
wait_serving gateway-first
stop "$STARTED"


# The demo portal's and ministry's rate limit (the gateway's default, 1,000/s) would refuse
# most of the generator's calls: lift them in this benchmark's copy of the demo policy.
sed -i -E 's#^identity = "spiffe://popgw.dev/(portal/dvcqg|ministry/justice)"$#&\nrate_per_second = 1000000\nburst = 1000000#' \
    "$WORK/data/policy.toml"
[ "$(grep -c '^rate_per_second = 1000000$' "$WORK/data/policy.toml")" -ge 2 ] ||
    { echo "could not lift the demo clients' rate limits in $WORK/data/policy.toml" >&2; exit 1; }
start gateway "$SERVER_CORE" "$BIN" serve --listen "$GW" --admin-listen 127.0.0.1:27464
wait_serving gateway
G=$STARTED
# Every one of the 10,000 ids read once, so that the measured runs are cache hits.
load popgw-warmup "$GW" "$G" --secs 4
load popgw-closed "$GW" "$G"
load popgw-one "$GW" "$G" --callers 1 --connections 1
load popgw-mix "$GW" "$G" --mix verify=8,citizen=1,household=1 --zipf 1.1
load popgw-connect "$GW" "$G" --connect --callers 16
HALF=$(python3 -c "import json; print(round(json.load(open('$OUT/popgw-closed.json'))['throughput'] / 2))")
load popgw-open-half "$GW" "$G" --rate "$HALF"
curl -s http://127.0.0.1:27464/metrics | grep -E '^popgw_audit_batch_records_(sum|count)' >"$OUT/popgw-audit-batches.txt" || true
stop "$G"

start baseline "$SERVER_CORE" "$BENCH" baseline --dir "$WORK" --listen "$BASE"
wait_port "$BASE"
B=$STARTED
load baseline-closed "$BASE" "$B"
load baseline-one "$BASE" "$B" --callers 1 --connections 1
load baseline-mix "$BASE" "$B" --mix verify=8,citizen=1,household=1 --zipf 1.1
load baseline-connect "$BASE" "$B" --connect --callers 16
# The generator's own floor for the open loop: the baseline at popgw's rate.
load baseline-open-half "$BASE" "$B" --rate "$HALF"

# The proxy a team would otherwise put in front of the database: nginx `grpc_pass` with
# mutual TLS on both sides (the caller's certificate checked against the dev CA, the
# gateway's client certificate presented to the baseline), pinned to the baseline's core.
NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "nginx is missing: installing Debian's (apt-get install nginx)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >"$OUT/nginx-install.log" 2>&1 || true
    NGINX=$(command -v nginx || true)
fi
if [ -n "$NGINX" ]; then
    echo "nginx: $("$NGINX" -v 2>&1)" >&2
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $OUT/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    upstream baseline { server $BASE; keepalive 64; keepalive_requests 1000000000; }
    # nginx closes a connection after 1,000 requests by default: a caller that keeps its
    # connection (as the generator does) would see GOAWAY.
    keepalive_requests 1000000000;
    server {
        listen $NGX ssl http2;
        ssl_certificate $WORK/certs/server.pem;
        ssl_certificate_key $WORK/certs/server.key;
        ssl_client_certificate $WORK/certs/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        location / {
            grpc_pass grpcs://baseline;
            grpc_ssl_certificate $WORK/certs/gateway.pem;
            grpc_ssl_certificate_key $WORK/certs/gateway.key;
            grpc_ssl_trusted_certificate $WORK/certs/ca.pem;
            grpc_ssl_protocols TLSv1.3;
            grpc_ssl_verify on;
            grpc_ssl_name localhost;
            grpc_ssl_session_reuse on;
        }
    }
}
EOF
    start nginx "$SERVER_CORE" "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g "daemon off;"
    wait_port "$NGX"
    N=$STARTED
    # Its CPU is its worker's (the master only forks it).
    NW=$(pgrep -P "$N" | head -n 1 || true)
    load nginx-closed "$NGX" "${NW:-$N}"
    load nginx-one "$NGX" "${NW:-$N}" --callers 1 --connections 1
    stop "$N"
else
    echo "nginx is missing and could not be installed: its runs are left out" >&2
fi
stop "$B"

# Every lookup a miss: the remote registry with 1 ms of injected latency, cache TTL 1 ms.
cat >"$WORK/miss.toml" <<EOF
listen = "$GW"
data_dir = "data"
[tls]
client_ca = "certs/ca.pem"
cert = "certs/server.pem"
key = "certs/server.key"
client_crls = ["certs/crl.pem"]
[registry]
kind = "remote"
endpoint = "https://localhost:${REG##*:}"
cert = "certs/gateway.pem"
key = "certs/gateway.key"
connections = 4
[cache]
ttl_ms = 1
negative_ttl_ms = 1
[admin]
listen = "127.0.0.1:27464"
EOF
start registry "$GEN_CORE" "$BIN" registry serve --store data/registry --listen "$REG" \
    --allow spiffe://popgw.dev/gateway/node-1 --inject-latency-ms 1
wait_port "$REG"
R=$STARTED
start gateway-miss "$SERVER_CORE" "$BIN" serve --config miss.toml
wait_serving gateway-miss
G=$STARTED
load popgw-miss "$GW" "$G"
stop "$G"
stop "$R"

# One fdatasync on this disk (the one-caller target is the baseline's p50 plus one).
python3 "$ROOT/benches/fdatasync.py" "$WORK" >"$OUT/fdatasync.txt"

# The audit log alone: durable (fdatasync) and sealed records per second.
cargo bench --quiet -p popgw-benches --bench audit >"$OUT/audit-bench.txt" 2>&1 || {
    echo "cargo bench -p popgw-benches --bench audit failed: see $OUT/audit-bench.txt" >&2
    exit 1
}

python3 "$ROOT/benches/report.py" "$OUT"
echo "report: $OUT/report.md"
