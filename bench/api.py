"""API benchmark (DESIGN §9: GET job detail / list page at 50 concurrent clients, one worker,
>= 2,000 req/s and p99 <= 25 ms), and SSE log follow latency (printed -> received).

The two halves of the budget are measured apart. Capacity: 50 clients each sending as soon as
it has its answer (closed loop). Latency: the same 50 clients sending 2,000 requests/s between
them on a schedule. Both at once cannot be asked of a closed loop: by Little's law its mean
latency is clients / throughput, 50 / 2,000 = 25 ms at the budget's rate, so its p99 is above
25 ms by construction, however fast the gateway.

Run: .venv/bin/python -m bench.api [--jobs 200] [--seconds 5] [--clients 50] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

from bench.common import bench_stack, print_table
from bench.spine import submit, wait_status

WARMUP_S = 0.5  # connections opening, first answers computed: not the steady state measured


async def hammer(base: str, token: str, paths: list[str], clients: int, seconds: float,
                 rate: float | None = None) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `clients` concurrent keep-alive connections cycling
    `paths`. A bare HTTP/1.1 client on asyncio streams: httpx spends more CPU per request than
    the gateway does, and on a 2-core machine the load generator would be what is measured.

    Without `rate` each client sends its next request as soon as it has the answer (the most
    the gateway serves). With `rate` the clients together send `rate` requests/s on a fixed
    schedule, and a request's latency runs from its scheduled time, so a stalled gateway is
    charged for the requests it delayed (no coordinated omission)."""
    url = httpx.URL(base)
    host, port, prefix = url.host, url.port, url.path.rstrip("/")
    latencies: list[float] = []
    begin = time.perf_counter()
    measure_from, stop_at = begin + WARMUP_S, begin + WARMUP_S + seconds
    period_s = clients / rate if rate else 0.0

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n, due = i, begin + period_s * i / clients
        try:
            while (now := time.perf_counter()) < stop_at:
                if rate:
                    if due > now:
                        await asyncio.sleep(due - now)
                    t0, due = due, due + period_s
                else:
                    t0 = now
                request = (f"GET {prefix}{paths[n % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n"
                           f"Authorization: Bearer {token}\r\n\r\n").encode()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                if t0 >= measure_from:
                    latencies.append(time.perf_counter() - t0)
                assert status == 200, head
                n += clients
        finally:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    latencies.sort()
    return len(latencies) / seconds, statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3


def sse_latency(base: str, token: str, api: httpx.Client, lines: int = 30) -> list[float]:
    """Each line carries the time it was printed; latency = received - printed."""
    script = ("import time, json\n"
              f"for i in range({lines}):\n"
              "    print(json.dumps({'i': i, 't': time.time()}), flush=True)\n"
              "    time.sleep(0.1)\n")
    job = submit(api, [sys.executable, "-c", script])
    out: list[float] = []
    with httpx.stream("GET", f"{base}/jobs/{job}/logs/stream?type=train", timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as r:
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "log":
                text = json.loads(line[5:])["text"]
                out.append(time.time() - json.loads(text)["t"])
            elif line.startswith("data:") and event == "end":
                break
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2000.0, help="requests/s of the paced runs")
    args = ap.parse_args()
    with bench_stack("ty-bench-api-") as b:
        b.stack.start_agent("bench", b.tmp / "work", b.nats_url, b.tmp / "agent.log")
        api = b.start_gateway()
        jobs = [submit(api, [sys.executable, "-c", "print('hello')"]) for _ in range(args.jobs)]
        for job in jobs[-5:]:
            wait_status(api, job, {"succeeded"}, poll_s=0.05)
        base = f"http://127.0.0.1:{b.port}/api/v1/training"
        detail_paths = [f"/jobs/{j}" for j in jobs[:50]]
        list_paths = ["/jobs?limit=50", "/jobs?limit=50&offset=50"]
        status_paths = [f"/jobs/{j}/status" for j in jobs[:50]]
        detail = asyncio.run(hammer(base, b.token, detail_paths, args.clients, args.seconds))
        listing = asyncio.run(hammer(base, b.token, list_paths, args.clients, args.seconds))
        status = asyncio.run(hammer(base, b.token, status_paths, args.clients, args.seconds))
        detail_at = asyncio.run(hammer(base, b.token, detail_paths, args.clients, args.seconds, args.rate))
        listing_at = asyncio.run(hammer(base, b.token, list_paths, args.clients, args.seconds, args.rate))
        sse = sse_latency(base, b.token, api)
    c, r = args.clients, args.rate
    rows = [
        (
            f"GET /jobs/{{id}} (detail), {c} clients flat out",
            f"{detail[0]:,.0f} req/s",
            f"p50 {detail[1]:.1f} ms, p99 {detail[2]:.1f} ms; budget >= 2,000 req/s",
        ),
        (
            f"GET /jobs?limit=50 (list page), {c} clients flat out",
            f"{listing[0]:,.0f} req/s",
            f"p50 {listing[1]:.1f} ms, p99 {listing[2]:.1f} ms; same budget",
        ),
        (
            f"GET /jobs/{{id}}/status, {c} clients flat out",
            f"{status[0]:,.0f} req/s",
            f"p50 {status[1]:.1f} ms, p99 {status[2]:.1f} ms",
        ),
        (
            f"GET detail, {c} clients sending {r:,.0f} req/s",
            f"p99 {detail_at[2]:.1f} ms",
            f"p50 {detail_at[1]:.1f} ms ({detail_at[0]:,.0f} req/s answered); budget p99 <= 25 ms",
        ),
        (
            f"GET list page, {c} clients sending {r:,.0f} req/s",
            f"p99 {listing_at[2]:.1f} ms",
            f"p50 {listing_at[1]:.1f} ms ({listing_at[0]:,.0f} req/s answered); same budget",
        ),
        (
            "SSE log follow, printed -> received",
            f"{statistics.median(sse) * 1e3:.1f} ms p50",
            f"p90 {sse[int(len(sse) * 0.9)] * 1e3:.1f} ms over {len(sse)} lines",
        ),
    ]
    print_table(rows, 16)


if __name__ == "__main__":
    main()
