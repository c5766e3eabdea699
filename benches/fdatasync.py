#!/usr/bin/env python3
"""One fdatasync on the disk of DIR, as the audit log pays it: appends of one sealed record
(~600 bytes) to a file, each followed by fdatasync; prints the median and p99 in µs as JSON.

    benches/fdatasync.py DIR [COUNT]
"""
import json
import os
import sys
import tempfile
import time

directory = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
record = b"x" * 599 + b"\n"
with tempfile.NamedTemporaryFile(dir=directory, prefix="fdatasync-") as f:
    fd = f.fileno()
    for _ in range(50):  # the file's first blocks allocated, as in a segment in use
        os.write(fd, record)
        os.fdatasync(fd)
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        os.write(fd, record)
        os.fdatasync(fd)
        samples.append((time.perf_counter_ns() - t0) / 1000)
samples.sort()
print(json.dumps({"count": count, "median_us": samples[len(samples) // 2],
                  "p99_us": samples[int(len(samples) * 0.99)]}))
