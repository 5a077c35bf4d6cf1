"""A trainer that checkpoints on SIGTERM and resumes from TRAINYARD_RESUME_FROM, as a
transformers or swift run does (their SIGTERM save; `resume_from_checkpoint`).

    checkpointing.py LEDGER TOTAL_STEPS STEP_S

Each finished step is appended to LEDGER (shared by every attempt), so a test can see that no
step ran twice and none was skipped. On SIGTERM it finishes the step under way, writes
`ckpt-N` (the last finished step) in its run dir, reports it, and exits 0."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

ledger, total, step_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = False


def on_term(_signum: int, _frame: object) -> None:
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
done = 0
resume = os.environ.get("TRAINYARD_RESUME_FROM")
if resume:
    with open(resume) as f:
        done = json.load(f)["step"]
    print(f"resuming from {resume} at step {done}", flush=True)
for step in range(done + 1, total + 1):
    time.sleep(step_s)
    with open(ledger, "a") as f:
        f.write(f"{step}\n")
    done = step
    print("@trainyard " + json.dumps({"step": step, "total_steps": total, "loss": 1.0 / step}), flush=True)
    if stop:
        path = f"ckpt-{step}"
        with open(path, "w") as f:
            json.dump({"step": step}, f)
        print("@trainyard " + json.dumps({"checkpoint": path, "step": step}), flush=True)
        print(f"saved {path} on SIGTERM", flush=True)
        sys.exit(0)
print("training complete", flush=True)
