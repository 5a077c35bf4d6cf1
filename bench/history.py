"""Metrics and logs at the trainer's speed (issue 17), in one run on this machine:

  (a) metric points printed by a trainer -> all queryable: the 100k case (trainer start
      included; three times) beside MLflow's `log_batch`, and sustained over 2M points
  (b) a whole series of 100k points through the API in one request (columns and points), and
      downsampled to 1,000, beside MLflow's `get_metric_history`
  (c) 100k printed lines -> the last one queryable, beside the same trainer writing them to a
      file (taken in turn, three times; the job's end watched by SSE, and again with the log
      polled every 20 ms throughout)
  (d) `tail=100` with a level filter on a 10M-line `logs` table (the query behind GET /logs,
      on a DuckDB file of that size built for it)

The MLflow figures are the issue's own, measured on this machine (MLflow is not installed here;
the workload is the same). Run: .venv/bin/python -m bench.history [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import bench_stack, print_table
from bench.spine import stored_rows, submit, throughput, wait_status
from gateway.projection.schema import open_db
from gateway.read.queries import LogFilter, Reader
from shared.ids import job_key

MLFLOW_LOG_BATCH_POINTS_S = 9_300  # 100k points via log_batch x1000 (issue 17's measurement)
MLFLOW_HISTORY_S = 4.85  # get_metric_history of those 100k points

POINTS = ("import sys\nw=sys.stdout.write\n"
          "for i in range({n}): w('@trainyard {{\"step\": %d, \"metrics\": {{{m}}}}}\\n' % {args})\n")
FIVE = '"loss": 0.5, "lr": 0.0001, "grad_norm": 1.5, "acc": 0.9, "tok_s": 1234.0'
# A trainer printing a line per step, flushed as `print(..., flush=True)` does.
LINES = "for i in range({n}): print('line %07d some trainer output text' % i, flush=True)\n"


def points_per_s(api: httpx.Client, lines: int, metrics: str, per_line: int) -> float:
    script = POINTS.format(n=lines, m=metrics, args="i")
    return throughput(api, script, lines * per_line, "SELECT count(*) FROM metrics WHERE job_id = '{job}'")


def one_series(api: httpx.Client, points: int) -> str:
    """A job whose `loss` has `points` points (stored when this returns)."""
    script = POINTS.format(n=points, m='"loss": %f', args="(i, 1 / (i + 1))")
    job = submit(api, [sys.executable, "-c", script])
    wait_status(api, job, {"succeeded"}, poll_s=0.02)
    sql_url = str(api.base_url.join("/api/v1/sql"))
    while stored_rows(api, sql_url, f"SELECT count(*) FROM metrics WHERE job_id = '{job}'") < points:
        time.sleep(0.02)
    return job


def request_ms(api: httpx.Client, path: str, params: dict, runs: int, check) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs + 2):
        t0 = time.perf_counter()
        r = api.get(path, params=params)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        check(r.json())
    return statistics.median(times[2:]) * 1e3  # the first two warm DuckDB's caches


def lines_vs_bare(api: httpx.Client, lines: int, tmp: Path, *, watch: bool) -> tuple[float, float]:
    """(seconds from submit to the last line queryable, seconds of the bare trainer writing
    the same lines to a file). `watch`: the job's end awaited on its progress stream (SSE: the
    gateway pushes it, nothing is asked meanwhile), then the log asked every 5 ms; else the log
    asked every 20 ms from the start, as a dashboard polling hard would (each ask is a query:
    ~0.15 s of the gateway's CPU per run, taken from the trainer's share of the two cores)."""
    # Quiet first: the projection folds its WAL once idle (gateway/projection/checkpoints.py),
    # and that fold is not the bare trainer's to share the machine with.
    time.sleep(0.6)
    bare_t0 = time.perf_counter()
    with open(tmp / "bare.log", "w") as out:
        subprocess.run([sys.executable, "-c", LINES.format(n=lines)], stdout=out, check=True)
    bare = time.perf_counter() - bare_t0
    t0 = time.perf_counter()
    job = submit(api, [sys.executable, "-c", LINES.format(n=lines)])
    last = f"line {lines - 1:07d} some trainer output text"
    if watch:
        with api.stream("GET", f"/jobs/{job}/progress/stream") as events:
            next(line for line in events.iter_lines() if line.startswith("event: end"))
    while True:
        got = api.get(f"/jobs/{job}/logs", params={"tail": 1, "type": "train"}).json()["lines"]
        if got and got[-1]["text"] == last:
            return time.perf_counter() - t0, bare
        time.sleep(0.005 if watch else 0.02)


def big_log_tail(rows: int, runs: int) -> tuple[float, float, float]:
    """(p50 ms of tail=100 with level>=WARNING, of tail=100 unfiltered, of the text download's
    tail=100: `trainyard logs --tail 100`) on a `logs`
    table of `rows` lines: one job holds half of them (1 line in 200 a warning), 99 others the
    rest, interleaved as agents write them."""
    tmp = Path(tempfile.mkdtemp(prefix="ty-bigtail-"))
    con = open_db(str(tmp / "p.duckdb"))
    big = "job_20261130_000000_aaaaaa"
    con.execute(f"""INSERT INTO logs SELECT
        CASE WHEN i % 2 = 0 THEN '{big}'
             ELSE 'job_20261130_0000' || lpad(((i // 2) % 99)::VARCHAR, 2, '0') || '_bbbbbb' END,
        CASE WHEN i % 2 = 0 THEN {job_key(big)} ELSE {job_key(big) + 1} END, 1, i // 2, i / 1000.0, 'stdout',
        CASE WHEN i % 400 = 0 THEN 'WARNING' ELSE 'INFO' END, 'train', 'line ' || i::VARCHAR
        FROM range({rows}) t(i)""")
    con.execute("CHECKPOINT")
    reader = Reader(con)

    async def timed(chosen: LogFilter) -> float:
        times = []
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            # As the gateway asks it: told the attempt's last stored line (it holds it in memory).
            lines = await reader.logs(big, chosen, tail=100, limit=100, latest=(1, rows // 2 - 1))
            times.append(time.perf_counter() - t0)
            assert len(lines) == 100
        return statistics.median(times[2:]) * 1e3

    async def text() -> float:
        times = []
        for _ in range(runs + 2):
            t0 = time.perf_counter()
            body = b"".join([b async for b in reader.log_text(big, LogFilter(), 100, latest=(1, rows // 2 - 1))])
            times.append(time.perf_counter() - t0)
            assert body.count(b"\n") == 100
        return statistics.median(times[2:]) * 1e3

    try:
        return (asyncio.run(timed(LogFilter(min_level="WARNING"))), asyncio.run(timed(LogFilter())),
                asyncio.run(text()))
    finally:
        reader.close()
        con.close()


def overhead(pairs: list[tuple[float, float]]) -> str:
    """The median pair's overhead over the bare trainer, and the three."""
    each = [100 * (a / b - 1) for a, b in pairs]
    return f"{each[1]:.0f} % (median of 3: {', '.join(f'{x:.0f}' for x in each)} %)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20, help="requests per timed figure")
    ap.add_argument("--sustained-lines", type=int, default=400_000, help="x5 points")
    ap.add_argument("--log-rows", type=int, default=10_000_000)
    args = ap.parse_args()
    with bench_stack("ty-history-") as b:
        b.stack.start_agent("bench", b.tmp / "work", b.nats_url, b.tmp / "agent.log")
        api = b.start_gateway()
        wait_status(api, submit(api, [sys.executable, "-c", "print(1)"]), {"succeeded"}, 30)
        # Three in a row, the median shown: one such job takes ~0.4 s, where a stray second of
        # the other core's work moves a single figure by a third.
        tries = sorted(points_per_s(api, 20_000, FIVE, 5) for _ in range(3))
        hundred_k = tries[1]
        sustained = points_per_s(api, args.sustained_lines, FIVE, 5)
        job = one_series(api, 100_000)
        path = f"/jobs/{job}/metrics"

        def whole(answer: dict) -> None:
            assert not answer.get("left_out"), answer.get("left_out")

        columns = request_ms(api, path, {"name": "loss", "limit": 100_000, "format": "columns"}, args.runs, whole)
        charted = request_ms(api, path, {"name": "loss", "limit": 100_000, "format": "columns",
                                         "fields": "step,value,ts_s"}, args.runs, whole)
        points = request_ms(api, path, {"name": "loss", "limit": 100_000}, args.runs, whole)
        down = request_ms(api, path, {"name": "loss", "limit": 100_000, "downsample": 1000, "format": "columns"},
                          args.runs, whole)
        # Three pairs each way, the median pair by overhead: the bare trainer alone varies by
        # a fifth from one run to the next on this machine.
        pairs, polled = (sorted((lines_vs_bare(api, 100_000, b.tmp, watch=watch) for _ in range(3)),
                                key=lambda p: p[0] / p[1]) for watch in (True, False))
        lines_s, bare_s = pairs[1]
    tail_level, tail_plain, tail_text = big_log_tail(args.log_rows, args.runs)
    rows = [
        ("(a) 100k metric points printed -> queryable", f"{hundred_k:,.0f} points/s",
         f"{hundred_k / MLFLOW_LOG_BATCH_POINTS_S:.1f}x MLflow log_batch (median of 3; "
         f"{tries[0]:,.0f}-{tries[2]:,.0f}); goal >= 25x"),
        (f"(a) sustained, {args.sustained_lines * 5:,} points", f"{sustained:,.0f} points/s", "goal >= 250,000"),
        ("(b) 100k points, one request, columns (5 fields)", f"{columns:.1f} ms",
         f"{MLFLOW_HISTORY_S * 1e3 / columns:.0f}x MLflow get_metric_history; goal <= 50 ms (>= 100x)"),
        ("(b) same, fields=step,value,ts_s (MLflow's shape)", f"{charted:.1f} ms",
         f"{MLFLOW_HISTORY_S * 1e3 / charted:.0f}x MLflow get_metric_history"),
        ("(b) 100k points, one request, points", f"{points:.1f} ms", ""),
        ("(b) 100k points downsampled to 1,000", f"{down:.1f} ms", "goal <= 10 ms"),
        ("(c) 100k lines: submit -> last line queryable", f"{lines_s * 1e3:.0f} ms",
         f"bare trainer to a file {bare_s * 1e3:.0f} ms: overhead {overhead(pairs)}; goal <= 20 %"),
        ("(c) same, the log asked every 20 ms meanwhile", f"{polled[1][0] * 1e3:.0f} ms",
         f"bare trainer to a file {polled[1][1] * 1e3:.0f} ms: overhead {overhead(polled)}"),
        (f"(d) tail=100 level>=WARNING, {args.log_rows:,}-line table", f"{tail_level:.1f} ms", "goal <= 20 ms"),
        (f"(d) tail=100, {args.log_rows:,}-line table", f"{tail_plain:.1f} ms", ""),
        (f"(d) logs.txt tail=100, {args.log_rows:,}-line table", f"{tail_text:.1f} ms", "trainyard logs --tail 100"),
    ]
    print_table(rows, 20)


if __name__ == "__main__":
    main()
