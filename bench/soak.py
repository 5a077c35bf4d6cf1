"""Soak: run N jobs of mixed lengths and outcomes while agents, the gateway and nats-server are
killed (kill -9 or SIGTERM) and restarted at random moments, a keeper is killed under its
trainer, a second agent is started with a host name in use, and the projection file is
corrupted under a killed gateway; then check what a user must be able to rely on and print it:

- every job ended as its trainer decided (succeeded / failed with its exit code / stopped), or
  `lost` where its keeper was killed;
- every line a trainer was planned to print is stored exactly once, in order (compared with the
  plan, not with the run dir's files, which a trainer started twice would double as well; a
  stopped or lost job stores a prefix of its plan, as far as its files got);
- no attempt's trainer started more than once (each trainer counts its starts in a file);
- a second agent with a host name in use exits without running anything;
- no process of any job is left alive, and no GPU is held.

    python -m bench.soak --jobs 100 --faults 20 [--seed 7]

GPUs are simulated (this machine has none); everything else is real: nats-server, gateway and
agents as processes, trainers as subprocesses. A full disk is not injected here (it needs a
filesystem to fill: tests/faults/test_disk_full.py).
"""

from __future__ import annotations

import argparse
import collections
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.common import print_table
from gateway.runtime import DB_FILE
from tests.harness import TERMINAL, Rig, paced, paced_output

AGENTS = {"a": "2x80GB", "b": "2x80GB", "c": "2x40GB"}
FAULTS = (  # (what, weight)
    ("agent kill -9", 30), ("agent SIGTERM", 12), ("gateway kill -9", 18),
    ("nats-server SIGTERM", 8), ("nats-server kill -9", 12),
    ("keeper kill -9", 10), ("second agent", 6), ("projection corrupted", 8),
)


@dataclass
class PlannedJob:
    lines: int
    seconds: float
    exit_code: int
    stop: bool
    gpus: int
    job_id: str = ""
    keeper_killed: bool = False  # a fault took its keeper: `lost` is then right too
    starts_file: Path | None = None  # where its trainer notes each start (its attempt number)

    @property
    def expected(self) -> str:
        return "stopped" if self.stop else ("succeeded" if self.exit_code == 0 else "failed")

    def outcome_ok(self, final: dict) -> bool:
        if self.keeper_killed and final["status"] == "lost":
            return True
        if self.stop and final["status"] == "succeeded":
            return True  # it finished before the stop reached it
        return final["status"] == self.expected and (self.expected != "failed" or final["exit_code"] == self.exit_code)


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
    """An API call that outlives a gateway restart (and the 503 of a projection replaying)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except (httpx.HTTPError, KeyError, ValueError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def inject_faults(rig: Rig, rng: random.Random, want: int, done: threading.Event, log: list[str],
                  jobs: list[PlannedJob], broken: list[str]) -> None:
    names, weights = zip(*FAULTS, strict=False)
    while not done.is_set() or len(log) < want:
        time.sleep(rng.uniform(0.8, 2.0))
        what = rng.choices(names, weights)[0]
        if what == "keeper kill -9":
            if (victim := kill_a_keeper(rig, rng, jobs)) is not None:
                log.append(f"{what} ({victim})")
            continue
        if what == "second agent":
            host = rng.choice(list(AGENTS))
            log.append(f"{what} ({host})")
            if (why := second_agent_runs(rig, host)) is not None:
                broken.append(why)
            continue
        if what == "projection corrupted":
            rig.kill("gateway")
            corrupt(rig.data_dir / DB_FILE, rng)
            rig.start_gateway()
            log.append(f"{what} (gateway)")
            rig.wait_healthy()
            continue
        target = {"agent": f"agent-{rng.choice(list(AGENTS))}", "gateway": "gateway",
                  "nats-server": "nats"}[what.split()[0]]
        sig = signal.SIGKILL if what.endswith("-9") else signal.SIGTERM
        rig.restart(target, sig, down_s=rng.uniform(0.2, 1.2))
        log.append(f"{what} ({target})")
        if target == "gateway":
            rig.wait_healthy()


def kill_a_keeper(rig: Rig, rng: random.Random, jobs: list[PlannedJob]) -> str | None:
    """SIGKILL the keeper of a running job (its trainer runs on, orphaned): the job must end
    `lost` (no exit status) with none of its processes left, not run on unseen."""
    by_id = {job.job_id: job for job in jobs}
    try:
        listed = rig.api.client.get("/jobs", params={"status": "running", "limit": 20}).json()["jobs"]
        running = [(by_id[j["job_id"]], rig.api.client.get(f"/jobs/{j['job_id']}").json().get("pid"))
                   for j in listed if j["job_id"] in by_id]
    except (httpx.HTTPError, KeyError, ValueError):
        return None  # the gateway is restarting: another time
    running = [(job, pid) for job, pid in running if pid]
    if not running:
        return None
    job, pid = rng.choice(running)
    job.keeper_killed = True
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass
    return job.job_id


def second_agent_runs(rig: Rig, host: str) -> str | None:
    """Start another agent with `host`'s name on its own work dir: it must exit, refusing."""
    time.sleep(2.0)  # the real one beats again if it was just restarted
    log_path = rig.tmp / f"agent-{host}-second-{time.monotonic_ns()}.log"
    dup = rig.stack.start_agent(host, rig.tmp / f"work-{host}-second", rig.nats_url, log_path,
                                "--simulate-gpus", AGENTS[host], *rig.agent_flags)
    try:
        code = dup.wait(20)
    except subprocess.TimeoutExpired:
        dup.kill()
        dup.wait()
        return f"a second agent named {host} kept running"
    log_text = log_path.read_text()
    if code == 0 or "in use by another agent" not in log_text:
        return f"a second agent named {host} exited with {code} without refusing: {log_text[-300:]}"
    return None


def corrupt(db: Path, rng: random.Random) -> None:
    """Damage the projection file as a crash or a bad disk might: the gateway must set it aside."""
    how = rng.choice(("header", "truncate", "wal"))
    wal = db.with_name(db.name + ".wal")
    if how == "wal" and wal.exists() and wal.stat().st_size > 64:
        with open(wal, "r+b") as f:
            f.seek(wal.stat().st_size // 2)
            f.write(rng.randbytes(64))
    elif how == "truncate":
        db.write_bytes(b"")
    else:
        with open(db, "r+b") as f:
            f.write(rng.randbytes(4096))


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


def expected_lines(rig: Rig, job: PlannedJob, final: dict) -> dict[str, list[str]]:
    """What the trainer was planned to print, per stream; for a job cut short (stopped, lost),
    the plan's prefix as far as its output files got (they may hold a line twice, if it was run
    twice, but not a line it was never going to print)."""
    out, err = paced_output(job.lines)
    planned = {"stdout": out, "stderr": err}
    if final["status"] in ("succeeded", "failed"):
        return planned
    run_dir = rig.tmp / f"work-{final['host']}" / "runs" / job.job_id / str(final["attempt"])
    cut = {}
    for stream, lines in planned.items():
        path = run_dir / f"{stream}.log"
        written = set(path.read_text().splitlines()) if path.exists() else set()
        cut[stream] = [line for line in lines if line in written]
    return cut


def starts_per_attempt(job: PlannedJob) -> collections.Counter[str]:
    path = job.starts_file
    return collections.Counter(path.read_text().split()) if path and path.exists() else collections.Counter()


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
        starts_dir = rig.tmp / "starts"
        starts_dir.mkdir()
        for i, job in enumerate(jobs):
            # Each trainer appends its attempt number to a file per job: how often it started.
            job.starts_file = starts_dir / f"job{i}.starts"
            job.job_id = rig.api.submit(paced(job.lines, job.seconds, job.exit_code), gpus=job.gpus,
                                        env={"PACED_STARTS_FILE": str(job.starts_file)})
        print(f"{len(jobs)} jobs submitted to {len(AGENTS)} agents ({sum(int(g[0]) for g in AGENTS.values())} "
              f"simulated GPUs); injecting {args.faults}+ faults", flush=True)
        done = threading.Event()
        faults: list[str] = []
        broken: list[str] = []
        injector = threading.Thread(target=inject_faults, args=(rig, rng, args.faults, done, faults, jobs, broken))
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
        return report(rig, jobs, finals, faults, broken, time.monotonic() - started)
    finally:
        rig.stop()


def report(rig: Rig, jobs: list[PlannedJob], finals: dict[str, dict], faults: list[str], broken: list[str],
           wall_s: float) -> int:
    expected = stored = duplicates = missing = disordered = twice = 0
    wrong: list[str] = []
    for job in jobs:
        final = finals.get(job.job_id)
        if final is None:
            wrong.append(f"{job.job_id}: not finished")
            continue
        if not job.outcome_ok(final):
            wrong.append(f"{job.job_id}: {final['status']} (exit {final.get('exit_code')}), expected {job.expected}")
        twice += sum(1 for n in starts_per_attempt(job).values() if n > 1)
        want = expected_lines(rig, job, final)
        got = retrying(lambda job=job: rig.api.logs(job.job_id))
        for stream, lines in want.items():
            have = [line["text"] for line in got if line["stream"] == stream]
            expected += len(lines)
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
        ("lines planned / stored", f"{expected:,} / {stored:,}",
         "stdout + stderr as planned (a stopped or lost job: as far as it got)"),
        ("duplicate lines", str(duplicates), ""),
        ("missing lines", str(missing), ""),
        ("streams out of order", str(disordered), ""),
        ("attempts started twice", str(twice), "counted by the trainers themselves"),
        ("second agents that ran", str(len(broken)), "; ".join(broken[:3])),
        ("orphan processes", str(len(orphans)), ", ".join(map(str, orphans[:10]))),
        ("GPUs held at the end", str(len(held)),
         ", ".join(f"{g['host']}/{g['index']} {g['state']} {g.get('job_id') or ''}".strip() for g in held[:6])),
        ("wall time", f"{wall_s:.0f} s", ""),
    ]
    print_table(rows, figure_width=16)
    clean = not (wrong or duplicates or missing or disordered or twice or broken or orphans or held
                 or expected != stored)
    print("\nsoak: " + ("every invariant held" if clean else "INVARIANTS BROKEN"))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
