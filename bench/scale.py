"""Scale benchmark (issue 16): many hosts, thousands of short jobs, one nats-server, one gateway.

Starts AGENTS agents as separate processes (each a real `trainyard agent` with GPUS simulated
GPUs, heartbeating every 3 s as in production), measures the heartbeat load on NATS while idle,
submits JOBS short jobs (`true` on one GPU each) as fast as 8 clients can, and reports:
submit -> running p50/p99 (from the jobs' own timestamps), jobs finished per second, the
scheduling pass time (the gateway's /metrics histogram), the projector's lag at its worst,
and the CPU and memory of the gateway and nats-server over the run.

Run: .venv/bin/python -m bench.scale [--agents 100] [--gpus 8] [--jobs 5000]
"""

from __future__ import annotations

import argparse
import re
import statistics
import threading
import time

import httpx
import psutil

from bench.common import bench_stack, print_table, submit_jobs


class Sampler:
    """CPU (% of one core) and RSS of some processes, every second, from a thread."""

    def __init__(self, procs: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        for p in self.procs.values():
            p.cpu_percent()
        self.cpu: dict[str, list[float]] = {n: [] for n in procs}
        self.rss: dict[str, list[float]] = {n: [] for n in procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, p in self.procs.items():
                self.cpu[name].append(p.cpu_percent())
                self.rss[name].append(p.memory_info().rss / 2**20)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def varz(monitor: str) -> dict:
    return httpx.get(f"{monitor}/varz", timeout=5).json()


def pass_quantiles(metrics: str) -> tuple[int, float, str]:
    """From the gateway's histogram: how many passes, their mean, and the bucket holding p99."""
    buckets = [(float(le), float(n)) for le, n in re.findall(
        r'^trainyard_scheduling_pass_seconds_bucket\{le="([^"+]+)"\} (\S+)$', metrics, re.M)]
    count = total = 0.0
    if found := re.search(r"^trainyard_scheduling_pass_seconds_count (\S+)$", metrics, re.M):
        count = float(found.group(1))
    if found := re.search(r"^trainyard_scheduling_pass_seconds_sum (\S+)$", metrics, re.M):
        total = float(found.group(1))
    p99 = next((f"<= {le * 1e3:g} ms" for le, n in buckets if n >= 0.99 * count), "> 1 s")
    return int(count), (total / count * 1e3) if count else 0.0, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--idle-s", type=float, default=20.0, help="the window the heartbeat load is measured over")
    args = ap.parse_args()
    with bench_stack("ty-bench-scale-") as b:
        api = b.start_gateway()
        nats_pid = next(p.pid for n, p in b.stack.procs if n == "nats")
        gateway_pid = next(p.pid for n, p in b.stack.procs if n == "gateway")
        started = time.perf_counter()
        for a in range(args.agents):
            b.stack.start_agent(f"h{a:03d}", b.tmp / f"work{a}", b.nats_url, b.tmp / "agents" / f"h{a:03d}.log",
                                "--simulate-gpus", f"{args.gpus}x80GB")
        while (online := api.get("/system/status").json()["hosts_online"]) < args.agents:
            if time.perf_counter() - started > 600:
                raise SystemExit(f"only {online} of {args.agents} agents came online in 10 minutes")
            time.sleep(1)
        up_s = time.perf_counter() - started
        monitor = b.stack.nats_monitor_url
        time.sleep(5)  # past the agents' start-up chatter
        before, t0 = varz(monitor), time.perf_counter()
        idle = Sampler({"gateway": gateway_pid, "nats-server": nats_pid})
        time.sleep(args.idle_s)
        after, idle_s = varz(monitor), time.perf_counter() - t0
        idle.stop()
        msgs_s = (after["in_msgs"] - before["in_msgs"]) / idle_s
        bytes_s = (after["in_bytes"] - before["in_bytes"]) / idle_s

        def sql(query: str) -> list[list]:
            r = api.post(f"http://127.0.0.1:{b.port}/api/v1/sql", json={"sql": query, "limit": 10000})
            r.raise_for_status()
            return list(r.json()["rows"])

        sampler = Sampler({"gateway": gateway_pid, "nats-server": nats_pid})
        lag_worst = 0
        t_submit = time.perf_counter()
        submit_jobs(api, {"trainer": "command", "command": ["true"], "gpus": 1}, args.jobs)
        submit_s = time.perf_counter() - t_submit
        while True:
            counts = api.get("/system/status").json()
            health = httpx.get(f"http://127.0.0.1:{b.port}/health", timeout=10).json()
            lag_worst = max(lag_worst, *[v for v in health.get("projector_lag", {}).values() if v >= 0], 0)
            done = sql("SELECT count(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'stopped', 'lost')")[0][0]
            if done >= args.jobs and counts["queue_length"] == 0:
                break
            if time.perf_counter() - t_submit > 3600:
                raise SystemExit(f"only {done} of {args.jobs} jobs ended within an hour")
            time.sleep(1)
        all_s = time.perf_counter() - t_submit
        sampler.stop()
        rows = sql("SELECT started_s - submitted_s, status FROM jobs")
        samples = sql("SELECT count(*) FROM gpu_samples")[0][0]
        size = sum(f.stat().st_size for f in (b.tmp / "gw").glob("*.duckdb*"))
        events = sql("SELECT (SELECT count(*) FROM job_events), (SELECT count(*) FROM logs)")[0]
        waits = sorted(r[0] for r in rows if r[0] is not None)
        failed = sum(1 for r in rows if r[1] != "succeeded")
        count, mean_ms, p99 = pass_quantiles(httpx.get(f"http://127.0.0.1:{b.port}/metrics",
                                                       headers={"Authorization": f"Bearer {b.token}"}).text)

    def cpu(s: Sampler, name: str) -> str:
        return (f"{statistics.mean(s.cpu[name]):.0f}% mean, {max(s.cpu[name]):.0f}% max; "
                f"{max(s.rss[name]):.0f} MB RSS max")

    rows_out = [
        (f"{args.agents} agents x {args.gpus} simulated GPUs online", f"{up_s:.0f} s", "separate processes"),
        ("heartbeat load on NATS (idle)", f"{msgs_s:.1f} msg/s", f"{bytes_s / 1024:.1f} KiB/s in; every 3 s per host"),
        ("idle: gateway", cpu(idle, "gateway"), ""),
        ("idle: nats-server", cpu(idle, "nats-server"), ""),
        (f"{args.jobs} jobs submitted", f"{submit_s:.1f} s", f"{args.jobs / submit_s:.0f} submits/s (8 clients)"),
        ("all ended", f"{all_s:.1f} s", f"{args.jobs / all_s:.0f} jobs/s; {failed} not succeeded"),
        ("submit -> running p50 / p99",
         f"{waits[len(waits) // 2] * 1e3:.0f} / {waits[int(len(waits) * 0.99)] * 1e3:.0f} ms",
         "from each job's submitted_s and started_s"),
        ("scheduling pass", f"{mean_ms:.1f} ms mean", f"{count} passes; p99 {p99}; budget <= 20 ms"),
        ("projector lag, worst seen", f"{lag_worst} events", "sampled every second"),
        ("DuckDB at the end", f"{size / 2**20:.0f} MB", f"{samples:,} gpu_samples rows, {events[0]:,} job "
         f"events, {events[1]:,} log lines"),
        ("during the jobs: gateway", cpu(sampler, "gateway"), ""),
        ("during the jobs: nats-server", cpu(sampler, "nats-server"), ""),
    ]
    print_table(rows_out, 26)


if __name__ == "__main__":
    main()
