"""Prints N numbered lines (and a metric every 10th), as fast as it can."""
import json
import sys

n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write(f"line {i}\n")
    if i % 10 == 0:
        out.write("@trainyard " + json.dumps({"step": i, "total_steps": n, "metrics": {"loss": 1.0 / (i + 1)}}) + "\n")
out.flush()
