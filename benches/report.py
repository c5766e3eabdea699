#!/usr/bin/env python3
"""Turns benches/compare.sh's runs (one JSON report per run) into report.md and report.json."""
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone

out = sys.argv[1]
runs = {}
for name in sorted(os.listdir(out)):
    if name.endswith(".json") and name != "report.json":
        with open(os.path.join(out, name)) as f:
            runs[name[:-5]] = json.load(f)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args):
    try:
        return subprocess.check_output(["git", *args], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


machine = {
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "commit": git("rev-parse", "--short", "HEAD"),
    "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "cpu": cpu_model(),
    "cores": os.cpu_count(),
    "kernel": platform.release(),
    "server_core": 0,
    "generator_core": 1,
}

audit = {}
try:
    with open(os.path.join(out, "audit-bench.txt")) as f:
        text = f.read()
    m = re.search(r"thrpt:\s*\[([^\]]+)\]", text)
    if m:
        audit["throughput"] = m.group(1).strip()
        nums = re.findall(r"([\d.]+)\s*(K|M)?elem/s", m.group(1))
        if len(nums) == 3:
            scale = {"K": 1e3, "M": 1e6, None: 1, "": 1}
            audit["estimate_per_s"] = float(nums[1][0]) * scale[nums[1][1] or ""]
    m = re.search(r"(\d+) records in (\d+) fsynced batches", text)
    if m:
        audit["records_per_fsync"] = int(m.group(1)) / max(1, int(m.group(2)))
except OSError:
    pass

fdatasync = {}
try:
    with open(os.path.join(out, "fdatasync.txt")) as f:
        fdatasync = json.load(f)
except (OSError, ValueError):
    pass

batches = {}
try:
    with open(os.path.join(out, "popgw-audit-batches.txt")) as f:
        for line in f:
            k, v = line.split()
            batches[k] = float(v)
except (OSError, ValueError):
    pass


def ratio(a, b):
    if a in runs and b in runs and runs[b]["throughput"] > 0:
        return runs[a]["throughput"] / runs[b]["throughput"]
    return None


ratios = {
    "closed": ratio("popgw-closed", "baseline-closed"),
    "mix": ratio("popgw-mix", "baseline-mix"),
    "connect": ratio("popgw-connect", "baseline-connect"),
    "miss_over_hit": ratio("popgw-miss", "popgw-closed"),
    "over_nginx": ratio("popgw-closed", "nginx-closed"),
    "nginx_over_baseline": ratio("nginx-closed", "baseline-closed"),
}
added_one_caller_us = None
if "popgw-one" in runs and "baseline-one" in runs:
    added_one_caller_us = runs["popgw-one"]["latency_us"]["p50"] - runs["baseline-one"]["latency_us"]["p50"]

one_caller_bound_us = None
if "baseline-one" in runs and fdatasync.get("median_us"):
    one_caller_bound_us = runs["baseline-one"]["latency_us"]["p50"] + fdatasync["median_us"]

targets = {
    "closed_ratio_at_least_0.50": ratios["closed"] is not None and ratios["closed"] >= 0.50,
    "closed_ratio_at_least_0.70_goal": ratios["closed"] is not None and ratios["closed"] >= 0.70,
    "over_nginx_at_least_1.5": ratios["over_nginx"] is not None and ratios["over_nginx"] >= 1.5,
    "one_caller_p50_within_baseline_plus_fdatasync": one_caller_bound_us is not None
    and "popgw-one" in runs
    and runs["popgw-one"]["latency_us"]["p50"] <= one_caller_bound_us,
    "open_half_p99_at_most_5ms": "popgw-open-half" in runs
    and runs["popgw-open-half"]["latency_us"]["p99"] <= 5000,
    "connections_ratio_at_least_0.9": ratios["connect"] is not None and ratios["connect"] >= 0.9,
    "connections_per_s_at_least_500": "popgw-connect" in runs and runs["popgw-connect"]["throughput"] >= 500,
    "audit_sealed_records_per_s_at_least_40k": audit.get("estimate_per_s", 0) >= 40000,
}

with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(
        {
            "machine": machine,
            "runs": runs,
            "ratios": ratios,
            "added_latency_one_caller_p50_us": added_one_caller_us,
            "popgw_audit_batches": batches,
            "audit_bench": audit,
            "targets_met": targets,
        },
        f,
        indent=2,
    )


def pct(c):
    return "?" if c is None else f"{c * 100:.0f} %"


def row(name):
    r = runs.get(name)
    if r is None:
        return f"| {name} | not run | | | | | | | |"
    lat = r["latency_us"]
    errors = sum(r["errors"].values()) + r["not_match"]
    note = "**generator-limited**" if r["generator_limited"] else ""
    if r.get("dropped_sends") or r.get("late_sends"):
        note += f" late {r['late_sends']}, dropped {r['dropped_sends']}"
    return (
        f"| {name} | {r['throughput']:,.0f}/s | {lat['p50']:,.0f} | {lat['p99']:,.0f} | {lat['p999']:,.0f} "
        f"| {errors} | {pct(r['server_cpu'])} | {pct(r['generator_cpu'])} | {note} |"
    )


def fmt_ratio(r):
    return "n/a" if r is None else f"{r:.2f}×"


lines = [
    "# popgw against the limit of its stack (benches/compare.sh)",
    "",
    f"{machine['date']}, commit {machine['commit']}{' (with uncommitted changes)' if machine['dirty'] else ''}; "
    f"{machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}. Servers pinned to core 0, the "
    "load generator (`popgw loadgen`, its own process) to core 1; 2 s warm-up, then the measured part. "
    "Latency in µs; CPU in share of one core over the measured part.",
    "",
    "| run | OK answers | p50 | p99 | p99.9 | errors | server CPU | generator CPU | note |",
    "|---|---|---|---|---|---|---|---|---|",
]
for name in [
    "baseline-closed",
    "popgw-closed",
    "baseline-one",
    "popgw-one",
    "baseline-mix",
    "popgw-mix",
    "baseline-connect",
    "popgw-connect",
    "baseline-open-half",
    "popgw-open-half",
    "nginx-closed",
    "nginx-one",
    "popgw-miss",
]:
    lines.append(row(name))
lines += [
    "",
    f"- **Cache-hit VerifyIdentity, popgw / baseline: {fmt_ratio(ratios['closed'])}** (issue 28's target ≥ 0.50×, goal 0.70×).",
    f"- Zipf mix (VerifyIdentity 8 : GetCitizen 1 : GetHousehold 1, s = 1.1): {fmt_ratio(ratios['mix'])}.",
    f"- New mutual-TLS connections (full handshake and one call): {fmt_ratio(ratios['connect'])} "
    "(target ≥ 0.9× the baseline, and ≥ 500/s)"
    + (" — the baseline's generator is at its limit: the baseline could answer more, so this ratio is an upper bound."
       if runs.get("baseline-connect", {}).get("generator_limited") else "."),
    "- One caller, latency popgw adds over the baseline (p50): "
    + ("n/a" if added_one_caller_us is None else f"{added_one_caller_us:,.0f} µs"),
    "- One fdatasync on this disk (benches/fdatasync.py, 600-byte appends): "
    + (f"median {fdatasync['median_us']:,.0f} µs, p99 {fdatasync['p99_us']:,.0f} µs; the one-caller target is "
       f"popgw's p50 ≤ the baseline's + one: {one_caller_bound_us:,.0f} µs"
       if one_caller_bound_us is not None else "not measured"),
    "- Open loop at half popgw's saturated rate: p99 ≤ 5 ms is the target; baseline-open-half is the same rate "
    "against the baseline, the generator's own floor.",
    f"- Cache miss (1 ms upstream) / cache hit: {fmt_ratio(ratios['miss_over_hit'])}.",
    f"- **popgw / nginx `grpc_pass` (mutual TLS) in front of the baseline: {fmt_ratio(ratios['over_nginx'])}** "
    f"(target ≥ 1.5×); nginx / baseline: {fmt_ratio(ratios['nginx_over_baseline'])}.",
]
if batches.get("popgw_audit_batch_records_count"):
    lines.append(
        "- popgw's audit during its runs: "
        f"{batches['popgw_audit_batch_records_sum'] / batches['popgw_audit_batch_records_count']:.1f} records per "
        "fsynced, sealed batch."
    )
if audit:
    lines.append(
        f"- The audit log alone (`cargo bench -p popgw-benches --bench audit`, fsync, sealed, both cores): {audit.get('throughput', '?')} "
        "records/s (criterion low / estimate / high; target ≥ 40,000)."
    )
lines += ["", "Targets met: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in targets.items()), ""]
with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
