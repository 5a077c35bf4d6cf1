"""API benchmark (DESIGN §9: GET job detail / list page at 50 concurrent clients, one worker,
>= 2,000 req/s and p99 <= 25 ms), and SSE log follow latency (printed -> received).

Run: .venv/bin/python -m bench.api [--jobs 200] [--seconds 5] [--clients 50]
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


async def hammer(base: str, token: str, paths: list[str], clients: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `clients` concurrent keep-alive connections cycling
    `paths`. A bare HTTP/1.1 client on asyncio streams: httpx spends more CPU per request than
    the gateway does, and on a 2-core machine the load generator would be what is measured."""
    url = httpx.URL(base)
    host, port, prefix = url.host, url.port, url.path.rstrip("/")
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n = i
        try:
            while time.perf_counter() < stop_at:
                request = (f"GET {prefix}{paths[n % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n"
                           f"Authorization: Bearer {token}\r\n\r\n").encode()
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                assert status == 200, head
                n += clients
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return len(latencies) / elapsed, statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3


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
    args = ap.parse_args()
    with bench_stack("ty-bench-api-") as b:
        b.stack.start_agent("bench", b.tmp / "work", b.nats_url, b.tmp / "agent.log")
        api = b.start_gateway()
        jobs = [submit(api, [sys.executable, "-c", "print('hello')"]) for _ in range(args.jobs)]
        for job in jobs[-5:]:
            wait_status(api, job, {"succeeded"}, poll_s=0.05)
        base = f"http://127.0.0.1:{b.port}/api/v1/training"
        detail = asyncio.run(hammer(base, b.token, [f"/jobs/{j}" for j in jobs[:50]], args.clients, args.seconds))
        listing = asyncio.run(hammer(base, b.token, ["/jobs?limit=50", "/jobs?limit=50&offset=50"], args.clients, args.seconds))
        status = asyncio.run(hammer(base, b.token, [f"/jobs/{j}/status" for j in jobs[:50]], args.clients, args.seconds))
        sse = sse_latency(base, b.token, api)
    rows = [
        (f"GET /jobs/{{id}} (detail), {args.clients} clients", f"{detail[0]:,.0f} req/s", f"p50 {detail[1]:.1f} ms, p99 {detail[2]:.1f} ms; budget >= 2,000 req/s, p99 <= 25 ms"),
        (f"GET /jobs?limit=50 (list page), {args.clients} clients", f"{listing[0]:,.0f} req/s", f"p50 {listing[1]:.1f} ms, p99 {listing[2]:.1f} ms; same budget"),
        (f"GET /jobs/{{id}}/status, {args.clients} clients", f"{status[0]:,.0f} req/s", f"p50 {status[1]:.1f} ms, p99 {status[2]:.1f} ms"),
        ("SSE log follow, printed -> received", f"{statistics.median(sse)*1e3:.1f} ms p50", f"p90 {sse[int(len(sse)*0.9)]*1e3:.1f} ms over {len(sse)} lines"),
    ]
    print_table(rows, 16)


if __name__ == "__main__":
    main()
