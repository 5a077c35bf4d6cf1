"""Soak: run N jobs of mixed lengths and outcomes while agents, the gateway and nats-server are
killed (kill -9 or SIGTERM) and restarted at random moments; then check what a user must be
able to rely on and print it:

- every job ended as its trainer decided (succeeded / failed with its exit code / stopped);
- every line a trainer printed (its stdout.log and stderr.log on the host) is stored exactly
  once, in order;
- no process of any job is left alive, and no GPU is held.

    python -m bench.soak --jobs 100 --faults 20 [--seed 7]

GPUs are simulated (this machine has none); everything else is real: nats-server, gateway and
agents as processes, trainers as subprocesses.
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.common import print_table
from tests.harness import TERMINAL, Rig, paced

AGENTS = {"a": "2x80GB", "b": "2x80GB", "c": "2x40GB"}
FAULTS = (  # (what, weight)
    ("agent kill -9", 35), ("agent SIGTERM", 15), ("gateway kill -9", 25),
    ("nats-server SIGTERM", 10), ("nats-server kill -9", 15),
)


@dataclass
class PlannedJob:
    lines: int
    seconds: float
    exit_code: int
    stop: bool
    gpus: int
    job_id: str = ""

    @property
    def expected(self) -> str:
        return "stopped" if self.stop else ("succeeded" if self.exit_code == 0 else "failed")


def plan(n: int, rng: random.Random) -> list[PlannedJob]:
    jobs = []
    for _ in range(n):
        roll = rng.random()
        stop = roll < 0.12
        exit_code = rng.randint(1, 5) if 0.12 <= roll < 0.27 else 0
        seconds = rng.uniform(4.0, 6.0) if stop else rng.uniform(0.3, 3.0)
        jobs.append(PlannedJob(rng.randint(20, 800), round(seconds, 2), exit_code, stop,
                               2 if rng.random() < 0.1 else 1))
    return jobs


def retrying(fn, timeout_s: float = 120.0):
    """An API call that outlives a gateway restart."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (httpx.HTTPError, KeyError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def inject_faults(rig: Rig, rng: random.Random, want: int, done: threading.Event, log: list[str]) -> None:
    names, weights = zip(*FAULTS, strict=False)
    while not done.is_set() or len(log) < want:
        time.sleep(rng.uniform(0.8, 2.0))
        what = rng.choices(names, weights)[0]
        target = {"agent": f"agent-{rng.choice(list(AGENTS))}", "gateway": "gateway",
                  "nats-server": "nats"}[what.split()[0]]
        sig = signal.SIGKILL if what.endswith("-9") else signal.SIGTERM
        rig.restart(target, sig, down_s=rng.uniform(0.2, 1.2))
        log.append(f"{what} ({target})")
        if target == "gateway":
            rig.wait_healthy()


def stop_when_running(rig: Rig, jobs: list[PlannedJob], done: threading.Event) -> None:
    pending = [j for j in jobs if j.stop]
    while pending and not done.is_set():
        for job in list(pending):
            status = retrying(lambda job=job: rig.api.status(job.job_id))["status"]
            if status == "running":
                retrying(lambda job=job: rig.api.client.post(f"/jobs/{job.job_id}/stop", json={"grace_s": 2}))
                pending.remove(job)
            elif status in TERMINAL:
                pending.remove(job)
        time.sleep(0.2)


def printed_lines(rig: Rig, status: dict) -> dict[str, list[str]]:
    """What the trainer wrote, from its output files on the host (metric lines are not logs)."""
    run_dir = rig.tmp / f"work-{status['host']}" / "runs" / status["job_id"] / str(status["attempt"])
    out = {}
    for stream in ("stdout", "stderr"):
        path = run_dir / f"{stream}.log"
        text = path.read_text() if path.exists() else ""
        out[stream] = [line for line in text.splitlines() if not line.startswith("@trainyard ")]
    return out


def leftover_processes(job_ids: set[str]) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TRAINYARD_JOB_ID") in job_ids and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    rig = Rig(Path(tempfile.mkdtemp(prefix="ty-soak-")),
              gateway_flags=("--host-timeout-s", "3", "--host-lost-grace-s", "60", "--scheduler-lease-ttl-s", "3"))
    try:
        rig.start(AGENTS)
        jobs = plan(args.jobs, rng)
        for job in jobs:
            job.job_id = rig.api.submit(paced(job.lines, job.seconds, job.exit_code), gpus=job.gpus)
        print(f"{len(jobs)} jobs submitted to {len(AGENTS)} agents ({sum(int(g[0]) for g in AGENTS.values())} "
              f"simulated GPUs); injecting {args.faults}+ faults", flush=True)
        done = threading.Event()
        faults: list[str] = []
        injector = threading.Thread(target=inject_faults, args=(rig, rng, args.faults, done, faults))
        stopper = threading.Thread(target=stop_when_running, args=(rig, jobs, done))
        injector.start()
        stopper.start()
        deadline = time.monotonic() + args.timeout_s
        finals: dict[str, dict] = {}
        while len(finals) < len(jobs) and time.monotonic() < deadline:
            for job in jobs:
                if job.job_id not in finals:
                    st = retrying(lambda job=job: rig.api.status(job.job_id))
                    if st["status"] in TERMINAL:
                        finals[job.job_id] = st
            time.sleep(0.5)
        done.set()
        injector.join()
        stopper.join()
        rig.wait_healthy()
        rig.wait_online(len(AGENTS))
        settle = time.monotonic() + 15  # the last fault may have been a moment ago
        while retrying(rig.busy_gpus) and time.monotonic() < settle:
            time.sleep(0.2)
        return report(rig, jobs, finals, faults, time.monotonic() - started)
    finally:
        rig.stop()


def report(rig: Rig, jobs: list[PlannedJob], finals: dict[str, dict], faults: list[str], wall_s: float) -> int:
    printed = stored = duplicates = missing = disordered = 0
    wrong: list[str] = []
    for job in jobs:
        final = finals.get(job.job_id)
        if final is None:
            wrong.append(f"{job.job_id}: not finished")
            continue
        ok = final["status"] == job.expected and (job.expected != "failed" or final["exit_code"] == job.exit_code)
        if job.stop and final["status"] == "succeeded":
            ok = True  # it finished before the stop reached it
        if not ok:
            wrong.append(f"{job.job_id}: {final['status']} (exit {final.get('exit_code')}), expected {job.expected}")
        want = printed_lines(rig, {**final, "job_id": job.job_id})
        got = retrying(lambda job=job: rig.api.logs(job.job_id))
        for stream, lines in want.items():
            have = [line["text"] for line in got if line["stream"] == stream]
            printed += len(lines)
            stored += len(have)
            duplicates += sum(n - 1 for n in collections.Counter(have).values() if n > 1)
            missing += len(set(lines) - set(have))
            disordered += int(have != lines and not (set(lines) - set(have)) and len(have) == len(set(have)))
    orphans = leftover_processes({job.job_id for job in jobs})
    held = retrying(rig.busy_gpus)
    outcomes = collections.Counter(f.get("status") for f in finals.values())
    kinds = collections.Counter(f.split(" (")[0] for f in faults)
    rows = [
        ("jobs run", f"{len(finals)} of {len(jobs)}", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))),
        ("faults injected", str(len(faults)), ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))),
        ("outcome as the trainer decided", f"{len(jobs) - len(wrong)} of {len(jobs)}", "; ".join(wrong[:5])),
        ("lines printed / stored", f"{printed:,} / {stored:,}", "stdout + stderr, from the run dirs' files"),
        ("duplicate lines", str(duplicates), ""),
        ("missing lines", str(missing), ""),
        ("streams out of order", str(disordered), ""),
        ("orphan processes", str(len(orphans)), ", ".join(map(str, orphans[:10]))),
        ("GPUs held at the end", str(len(held)),
         ", ".join(f"{g['host']}/{g['index']} {g['state']} {g.get('job_id') or ''}".strip() for g in held[:6])),
        ("wall time", f"{wall_s:.0f} s", ""),
    ]
    print_table(rows, figure_width=16)
    clean = not (wrong or duplicates or missing or disordered or orphans or held or printed != stored)
    print("\nsoak: " + ("every invariant held" if clean else "INVARIANTS BROKEN"))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
