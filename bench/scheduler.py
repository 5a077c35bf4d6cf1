"""Scheduler benchmark (DESIGN §9: a pass over 1,000 queued jobs and 100 hosts in <= 20 ms).

  (a) `plan()` over 1,000 queued jobs x 100 simulated hosts of 8 GPUs, in three situations:
      every GPU busy, half of the hosts free, and all free; mixed shapes (1/2/4/8 GPUs, some
      with a memory floor, some pinned).
  (b) submit -> running latency through the whole stack with 10 agents (separate processes,
      simulated GPUs, one nats-server, one gateway).

Run: .venv/bin/python -m bench.scheduler [--agents 10] [--jobs 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time

from bench.common import bench_stack, print_table
from gateway.projection.projector import JobNeeds
from gateway.scheduling.arrays import parallel_limits
from gateway.scheduling.dependencies import dependency_verdicts
from gateway.scheduling.placement import HostView, QueuedJob, plan, plan_pass
from gateway.scheduling.preemption import RunningJob
from gateway.scheduling.quotas import Quota, fair_order, quota_limits, recent_gpu_hours
from shared.jobspec import CommandJob
from shared.jobstate import JobState, JobStatus

SPEC = CommandJob(command=["x"])


def make_queue(n: int, rng: random.Random) -> list[QueuedJob]:
    queue = []
    for i in range(n):
        gpus = rng.choice([1, 1, 1, 1, 2, 2, 4, 8])
        pinned = rng.random() < 0.05
        needs = JobNeeds(
            priority=rng.randint(0, 10), submit_seq=i, gpus=gpus,
            gpu_ids=tuple(rng.sample(range(8), gpus)) if pinned else (),
            host=f"h{rng.randrange(100):03d}" if pinned else None,
            min_gpu_memory_gb=60.0 if rng.random() < 0.1 else None, spec=SPEC,
        )
        queue.append(QueuedJob(f"job_{i}", 0, needs))
    return queue


def make_hosts(n: int, busy_fraction: float, rng: random.Random) -> dict[str, HostView]:
    hosts = {}
    for h in range(n):
        view = HostView(f"h{h:03d}", {g: (81920 if h % 2 else 40960) for g in range(8)})
        if rng.random() < busy_fraction:
            view.busy = set(range(8))
            view.running = 2
        hosts[view.host] = view
    return hosts


def time_plan(busy_fraction: float, runs: int = 30) -> tuple[float, float, int]:
    times, placed = [], 0
    for r in range(runs):
        rng = random.Random(r)
        queue, hosts = make_queue(1000, rng), make_hosts(100, busy_fraction, rng)
        t0 = time.perf_counter()
        assignments, _ = plan(queue, hosts)
        times.append(time.perf_counter() - t0)
        placed = len(assignments)
    times.sort()
    return statistics.median(times) * 1e3, times[-1] * 1e3, placed


def gated_queue(n: int, rng: random.Random) -> tuple[list[QueuedJob], dict[str, JobState], dict[str, JobNeeds]]:
    """The same queue where a fifth of the jobs wait for others (2,000 earlier jobs, most of
    them succeeded) and a third belong to one of 20 arrays capped at 4 running each."""
    earlier = {f"old_{i}": JobState(job_id=f"old_{i}", status=JobStatus.SUCCEEDED if rng.random() < 0.8
                                    else JobStatus.RUNNING) for i in range(2000)}
    queue = []
    for q in make_queue(n, rng):
        fields: dict = {}
        if rng.random() < 0.2:
            fields["depends_on"] = [f"old_{rng.randrange(2000)}" for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.33:
            fields.update(array_id=f"job_20261130_000000_{rng.randrange(20):06x}", max_parallel=4)
        spec = CommandJob(command=["x"], **fields)
        queue.append(QueuedJob(q.job_id, 0, dataclasses.replace(q.needs, spec=spec)))
    states = {**earlier, **{q.job_id: JobState(job_id=q.job_id, status=JobStatus.QUEUED) for q in queue}}
    needs = {q.job_id: q.needs for q in queue}
    return queue, states, needs


def with_running_jobs(hosts: dict[str, HostView], rng: random.Random, now: float) -> None:
    """Busy hosts run 2 jobs of 4 GPUs each, half of them preemptible at priorities 0-6."""
    for view in hosts.values():
        if view.busy:
            view.jobs = [RunningJob(job_id=f"run_{view.host}_{k}", gpu_ids=tuple(range(4 * k, 4 * k + 4)),
                                    priority=rng.randint(0, 6), started_s=now - rng.choice([30, 3600]),
                                    preemptible=rng.random() < 0.5) for k in range(2)]


def time_gated(busy_fraction: float, runs: int = 30) -> tuple[float, float, int]:
    """Everything a pass does: dependencies, max_parallel, quotas (every user capped), fair
    share over 20 users, then the planner with preemption."""
    times, preempted = [], 0
    now = time.time()
    for r in range(runs):
        rng = random.Random(r)
        (queue, states, needs), hosts = gated_queue(1000, rng), make_hosts(100, busy_fraction, rng)
        for q in queue:
            needs[q.job_id] = dataclasses.replace(q.needs, submitted_by=f"user{rng.randrange(20)}")
        queue = [dataclasses.replace(q, needs=needs[q.job_id]) for q in queue]
        quotas = {("user", f"user{u}"): Quota(max_gpus=64, max_running_jobs=30) for u in range(20)}
        with_running_jobs(hosts, rng, now)
        t0 = time.perf_counter()
        ordered = fair_order(queue, recent_gpu_hours(states, needs, now, 7 * 86400))
        ready, _, _ = dependency_verdicts(ordered, states)
        ready, _ = parallel_limits(ready, states, needs)
        ready, _ = quota_limits(ready, states, needs, quotas)
        decided = plan_pass(ready, hosts, now=now)
        times.append(time.perf_counter() - t0)
        preempted += len(decided.preemptions)
    times.sort()
    return statistics.median(times) * 1e3, times[-1] * 1e3, preempted // runs


def submit_to_running(agents: int, jobs: int) -> list[float]:
    with bench_stack("ty-bench-sched-") as b:
        for a in range(agents):
            b.stack.start_agent(f"host-{a}", b.tmp / f"work{a}", b.nats_url, b.tmp / f"agent{a}.log",
                                "--simulate-gpus", "2x80GB", "--heartbeat-interval-s", "1")
        api = b.start_gateway()
        deadline = time.monotonic() + 30
        while api.get("/system/status").json()["hosts_online"] < agents:
            if time.monotonic() > deadline:
                raise TimeoutError("agents did not come online")
            time.sleep(0.1)
        latencies = []
        for _ in range(jobs):
            t0 = time.perf_counter()
            job = api.post(
                "/jobs",
                json={
                    "trainer": "command",
                    "gpus": 1,
                    "command": [sys.executable, "-c", "import time; time.sleep(0.2)"],
                },
            ).json()["job_id"]
            while api.get(f"/jobs/{job}/status").json()["status"] not in ("running", "succeeded", "failed"):
                time.sleep(0.001)
            latencies.append(time.perf_counter() - t0)
        return sorted(latencies)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=40)
    args = ap.parse_args()
    rows = []
    for label, busy in (("all GPUs busy", 1.0), ("half the hosts busy", 0.5), ("all GPUs free", 0.0)):
        p50, worst, placed = time_plan(busy)
        rows.append((f"(a) plan(), 1,000 jobs x 100 hosts, {label}", f"{p50:.1f} / {worst:.1f} ms",
                     f"p50 / max of 30; {placed} placed; budget <= 20 ms"))
    for label, busy in (("half busy", 0.5), ("all busy", 1.0)):
        p50, worst, preempted = time_gated(busy)
        rows.append((f"(a) with every rule on, {label}", f"{p50:.1f} / {worst:.1f} ms",
                     "1/5 wait for others, 1/3 in capped arrays, quotas, fair share, preemption "
                     f"({preempted} per pass); budget <= 20 ms"))
    lat = submit_to_running(args.agents, args.jobs)
    rows.append((f"(b) submit -> running, {args.agents} agents",
                 f"{statistics.median(lat)*1e3:.1f} / {lat[int(len(lat)*0.9)]*1e3:.1f} ms", "p50 / p90"))
    print_table(rows, 22)


if __name__ == "__main__":
    main()
