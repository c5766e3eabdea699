#!/usr/bin/env bash
# popgw's reliability table in one command (issue 27):
#
#   benches/reliability.sh
#
# Builds the release binaries, then runs benches/reliability.py: a real deployment on this
# machine (a private PostgreSQL and NATS, `popgw registry serve`, two gateway nodes, the
# indexer) under a steady mixed load, each fault injected while the load runs, the checks
# after each (every answered call's record, `audit verify` against the witness and the
# index, false verdicts), then rows 5-7 from the test suite. Writes
# target/reliability/report.md and report.json; RELIABILITY.md quotes a run.
#
# Needs root (PostgreSQL runs as the postgres user; node-2's audit folder is a tmpfs it
# fills), PostgreSQL 15's server binaries and nats-server (Debian's packages), python3.
# POPGW_RELIABILITY_KILLS (default 20), POPGW_RELIABILITY_OUTAGE_SECS (default 30),
# POPGW_RELIABILITY_TESTS=0 (skip rows 5-7).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "reliability.sh needs python3" >&2; exit 1; }
cargo build --release --locked --quiet --bin popgw --bin popgw-bench
exec python3 benches/reliability.py "$@"
