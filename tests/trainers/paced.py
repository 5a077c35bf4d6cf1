"""Prints `out I` lines on stdout (and `err I` on stderr every 7th) at a steady pace, with a
metric every 10th line, then exits with the given code. For fault tests: a run long enough to
kill things under it, whose every line can be checked afterwards.

usage: paced.py LINES SECONDS [EXIT_CODE]
With PACED_STARTS_FILE set, it first appends its attempt number (TRAINYARD_ATTEMPT) to that
file: a line per start.
"""
import json
import os
import sys
import time

if os.environ.get("PACED_STARTS_FILE"):
    with open(os.environ["PACED_STARTS_FILE"], "a") as starts:
        starts.write(f"{os.environ.get('TRAINYARD_ATTEMPT', '?')}\n")

lines, seconds = int(sys.argv[1]), float(sys.argv[2])
code = int(sys.argv[3]) if len(sys.argv) > 3 else 0
start = time.monotonic()
for i in range(lines):
    print(f"out {i}", flush=True)
    if i % 7 == 0:
        print(f"err {i}", file=sys.stderr, flush=True)
    if i % 10 == 0:
        print(
            "@trainyard " + json.dumps({"step": i, "total_steps": lines, "metrics": {"loss": 1.0 / (i + 1)}}),
            flush=True,
        )
    delay = start + seconds * (i + 1) / lines - time.monotonic()
    if delay > 0:
        time.sleep(delay)
sys.exit(code)
