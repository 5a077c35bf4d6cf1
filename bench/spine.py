"""Benchmark of the spine, in one run on this machine (DESIGN §9):

  (a) raw JetStream: async publish + pull consume of line-sized messages
  (b) trainyard end to end: trainer stdout -> rows queryable in DuckDB, log lines and metric points
  (c) submit -> first log line through the API (followed over SSE, and polled), beside the bare
      start of the same process (taken in turn with them)
  (d) stop (trainer exits on SIGTERM) -> terminal status visible
  (e) the agent's CPU while a trainer prints 10k lines/s

Run: .venv/bin/python -m bench.spine [--lines 2000000] [--metric-lines 400000] [--runs 20]

(b) is "sustained": DuckDB checkpoints its WAL every 64 MB (~0.5 s each, ~500k log lines
apart), and a run of 500k lines either contains one or not (160k-230k lines/s here from that
alone). 2M lines carry their share of checkpoints.
It starts its own nats-server, gateway and agent on free ports in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import httpx
import nats
import psutil

from bench.common import bench_stack, print_table

LINE = "line 0000000 some trainer output text"


async def raw_jetstream(url: str, count: int, size: int, options: dict[str, str]) -> tuple[float, float]:
    nc = await nats.connect(url, **options)
    js = nc.jetstream()
    await js.add_stream(name="BENCH_RAW", subjects=["bench.raw"])
    payload = b"x" * size
    t0 = time.perf_counter()
    # Async publish: a window of 500 publishes in flight, each acknowledged by the server.
    window = 500
    for start in range(0, count, window):
        await asyncio.gather(*(js.publish("bench.raw", payload) for _ in range(min(window, count - start))))
    publish_rate = count / (time.perf_counter() - t0)
    from nats.js.api import AckPolicy, ConsumerConfig

    sub = await js.pull_subscribe("bench.raw", durable="bench", stream="BENCH_RAW",
                                  config=ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=-1))
    got = 0
    t0 = time.perf_counter()
    while got < count:
        msgs = await sub.fetch(batch=min(2000, count - got), timeout=5)
        got += len(msgs)
        for m in msgs[-1:]:
            await m.ack()  # AckAll: one ack per batch
    consume_rate = count / (time.perf_counter() - t0)
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return publish_rate, consume_rate


def wait_status(api: httpx.Client, job: str, statuses: set[str], timeout_s: float = 300,
                poll_s: float = 0.002) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = api.get(f"/jobs/{job}/status").json()
        if st["status"] in statuses:
            return st
        time.sleep(poll_s)
    raise TimeoutError(f"{job} not in {statuses}")


def submit(api: httpx.Client, command: list[str]) -> str:
    r = api.post("/jobs", json={"trainer": "command", "command": command, "gpus": 0})
    r.raise_for_status()
    return r.json()["job_id"]


def throughput(api: httpx.Client, script: str, units: int, count_sql: str) -> float:
    """Units per second from the trainer's start to the moment all its rows are queryable.

    The exit is shown once every line before it is stored, unless the log stream is more than
    5 s behind (the projector then shows it anyway): `count_sql` (with `{job}`)
    confirms that every unit is there before the clock stops."""
    job = submit(api, [sys.executable, "-c", script])
    # Poll every 20 ms, not 2: over a run of seconds that costs < 1 % of accuracy, and fast
    # polling would make the gateway serve this script instead of projecting.
    st = wait_status(api, job, {"succeeded", "failed"}, poll_s=0.02)
    assert st["status"] == "succeeded", st
    sql_url = str(api.base_url.join("/api/v1/sql"))
    while (stored := stored_rows(api, sql_url, count_sql.format(job=job))) < units:
        time.sleep(0.02)
    done = time.time()
    assert stored == units, f"{stored} rows stored of {units}"
    return units / (done - st["started_s"])


def stored_rows(api: httpx.Client, sql_url: str, sql: str) -> int:
    r = api.post(sql_url, json={"sql": sql})
    assert r.status_code == 200, r.text
    return r.json()["rows"][0][0]


HELLO = [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(0.5)"]


def first_line_latency(api: httpx.Client) -> tuple[float, str]:
    """Submit, then follow the job's log (SSE, as `trainyard logs -f` does) until the line.
    (seconds, job id)."""
    t0 = time.perf_counter()
    job = submit(api, HELLO)
    with api.stream("GET", f"/jobs/{job}/logs/stream", params={"type": "train"}) as r:
        for line in r.iter_lines():
            if line.startswith("data:") and '"text":"hello"' in line:
                return time.perf_counter() - t0, job
    raise RuntimeError(f"{job}: the log stream ended without the line")


def first_line_polled(api: httpx.Client) -> float:
    """The same, polling GET /logs every millisecond (a client that hammers the gateway)."""
    t0 = time.perf_counter()
    job = submit(api, HELLO)
    while True:
        lines = api.get(f"/jobs/{job}/logs", params={"type": "train"}).json()["lines"]
        if any(ln["text"] == "hello" for ln in lines):
            return time.perf_counter() - t0
        time.sleep(0.001)


def bare_start() -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(0.5)"],
                            stdout=subprocess.PIPE)
    proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    proc.kill()
    proc.wait()
    return elapsed


def stop_latency(api: httpx.Client) -> float:
    job = submit(api, [sys.executable, "-c", "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.01)"])
    wait_status(api, job, {"running"})
    time.sleep(0.2)
    t0 = time.perf_counter()
    api.post(f"/jobs/{job}/stop", json={"force": False, "grace_s": 30})
    wait_status(api, job, {"stopped", "failed", "succeeded"})
    return time.perf_counter() - t0


PACED = """import sys, time
w = sys.stdout.write
t0 = time.monotonic()
for i in range({total}):
    if i % 100 == 0:
        time.sleep(max(0.0, t0 + i / {rate} - time.monotonic()))
        sys.stdout.flush()
    w('2026-11-22 12:00:00 INFO step %d loss 0.5 some trainer output text\\n' % i)
"""


def agent_cpu(api: httpx.Client, agent_pid: int, rate: int, seconds: int) -> float:
    """Agent CPU (percent of one core) while a trainer prints `rate` lines/s (with levels)."""
    agent = psutil.Process(agent_pid)
    job = submit(api, [sys.executable, "-c", PACED.format(total=rate * seconds, rate=rate)])
    wait_status(api, job, {"running"})
    time.sleep(0.5)
    before, t0 = sum(agent.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds - 1.5)
    used, wall = sum(agent.cpu_times()[:2]) - before, time.monotonic() - t0
    wait_status(api, job, {"succeeded", "failed"}, poll_s=0.05)
    return 100.0 * used / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--metric-lines", type=int, default=400_000)
    ap.add_argument("--raw", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with bench_stack("ty-bench-") as b:
        url = b.nats_url
        agent = b.stack.start_agent("bench", b.tmp / "work", url, b.tmp / "agent.log")
        api = b.start_gateway()
        wait_status(api, submit(api, [sys.executable, "-c", "print(1)"]), {"succeeded"}, 30)

        pub, con = asyncio.run(raw_jetstream(url, args.raw, len(LINE), b.stack.connect_options()))
        raw = min(pub, con)
        lines_s = throughput(
            api,
            f"import sys\nw=sys.stdout.write\nfor i in range({args.lines}): "
            "w('line %07d some trainer output text\\n' % i)",
            args.lines,
            "SELECT count(*) FROM logs WHERE job_id = '{job}' AND kind = 'train'",
        )
        metric_script = (
            "import sys\nw=sys.stdout.write\n"
            f"for i in range({args.metric_lines}): "
            'w(\'@trainyard {"step": %d, "metrics": {"loss": 0.5, "lr": 0.0001, "grad_norm": 1.5, '
            '"acc": 0.9, "tok_s": 1234.0}}\\n\' % i)'
        )
        points_s = throughput(api, metric_script, args.metric_lines * 5,
                              "SELECT count(*) FROM metrics WHERE job_id = '{job}'")
        # The budget's measure: each job submitted to a quiet system (the previous one has
        # ended), as the bare start is taken. Bare starts are taken in turn with these runs, so
        # that the machine's drift (a shared VM) weighs on both sides alike.
        firsts, bares = [], []
        for _ in range(args.runs):
            latency, job = first_line_latency(api)
            firsts.append(latency)
            wait_status(api, job, {"succeeded"}, poll_s=0.02)
            bares.append(bare_start())
        # Back to back: while the earlier jobs run and end (their exits are projected meanwhile).
        busy = [first_line_latency(api)[0] for _ in range(args.runs)]
        polled = [first_line_polled(api) for _ in range(args.runs)]
        firsts, busy, polled, bares = sorted(firsts), sorted(busy), sorted(polled), sorted(bares)
        stops = sorted(stop_latency(api) for _ in range(max(5, args.runs // 2)))
        cpu = agent_cpu(api, agent.pid, 10_000, 8)

        p50 = statistics.median
        rows = [
            (f"(a) raw JetStream, {len(LINE)}-byte msgs: publish / consume", f"{pub:,.0f} / {con:,.0f} msg/s", ""),
            (
                "(b) log lines, stdout -> queryable",
                f"{lines_s:,.0f} lines/s",
                f"{lines_s / raw:.2f}x raw; budget >= 200,000",
            ),
            (
                "(b) metric points, stdout -> queryable",
                f"{points_s:,.0f} points/s",
                f"{points_s / raw:.2f}x raw; budget >= 200,000",
            ),
            (
                "(c) submit -> first line, log follow (SSE), p50 / p90",
                f"{p50(firsts) * 1e3:.1f} / {firsts[int(len(firsts) * 0.9)] * 1e3:.1f} ms",
                f"overhead {(p50(firsts) - p50(bares)) * 1e3:.1f} ms over a bare start; budget <= 30",
            ),
            (
                "(c) same, back to back (earlier jobs still ending)",
                f"{p50(busy) * 1e3:.1f} / {busy[int(len(busy) * 0.9)] * 1e3:.1f} ms",
                f"overhead {(p50(busy) - p50(bares)) * 1e3:.1f} ms",
            ),
            (
                "(c) same, polling GET /logs every 1 ms, p50 / p90",
                f"{p50(polled) * 1e3:.1f} / {polled[int(len(polled) * 0.9)] * 1e3:.1f} ms",
                f"overhead {(p50(polled) - p50(bares)) * 1e3:.1f} ms (the polling loads the gateway)",
            ),
            ("(c) bare start of the same process, p50", f"{p50(bares) * 1e3:.1f} ms", ""),
            (
                "(d) stop -> terminal status visible, p50 / max",
                f"{p50(stops) * 1e3:.1f} / {stops[-1] * 1e3:.1f} ms",
                "budget <= 100",
            ),
            ("(e) agent CPU, trainer printing 10k lines/s", f"{cpu:.1f} % of one core", "budget <= 10 %"),
        ]
        print_table(rows, 28)


if __name__ == "__main__":
    main()
