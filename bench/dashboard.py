"""Dashboard benchmark and screenshots (issue 18), in Debian's chromium driven by Playwright.

  (a) first paint of the jobs page with 10,000 jobs in the database: from navigation to the
      table's first page drawn (budget: under a second), and the page's own assets' size;
  (b) with --screenshots DIR: a stack with one agent of simulated GPUs, a training whose loss
      falls, a finished and a waiting job, and a PNG of each page in DIR (docs/ in the repo).

Run: .venv/bin/python -m bench.dashboard [--jobs 10000] [--screenshots docs]  (--jobs 0: screenshots only)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from bench.common import bench_stack, print_table, submit_jobs
from gateway.web.routes import STATIC

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TRAINING = ("import json, math, time\n"
            "for step in range(1, 100000):\n"
            "    loss = 2.2 * math.exp(-step / 120) + 0.25 + 0.05 * math.sin(step / 3)\n"
            "    print('@trainyard ' + json.dumps({'step': step, 'total_steps': 3000, 'gpu_util': 88,\n"
            "          'metrics': {'loss': loss, 'lr': 1e-4 * min(1, step / 50)}}), flush=True)\n"
            "    print(f'step {step}: loss {loss:.4f}', flush=True)\n"
            "    time.sleep(0.02)\n")


def first_paint(base: str, token: str, runs: int = 5) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(runs):
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{base}/ui/#token={token}&/jobs")
            page.wait_for_selector("#jobs-body tr")
            # From the navigation's start to the first page of rows in the DOM.
            times.append(page.evaluate("() => performance.now()") / 1000)
            context.close()
        browser.close()
    return sorted(times)


def screenshots(out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with bench_stack("ty-bench-ui-") as b:
        b.stack.start_agent("gpu-host-1", b.tmp / "work", b.nats_url, b.tmp / "agent.log",
                            "--simulate-gpus", "4x80GB", "--heartbeat-interval-s", "1")
        api = b.start_gateway()
        while api.get("/system/status").json()["hosts_online"] < 1:
            time.sleep(0.2)
        done = api.post("/jobs", json={"trainer": "command", "name": "warmup-sweep-0", "gpus": 1,
                                       "command": [sys.executable, "-c", TRAINING.replace("100000", "150")]}).json()
        train = api.post("/jobs", json={"trainer": "command", "name": "llama-lora-r16", "gpus": 2, "priority": 7,
                                        "command": [sys.executable, "-c", TRAINING]}).json()["job_id"]
        api.post("/jobs", json={"trainer": "command", "name": "needs-eight-gpus", "gpus": 8,
                                "command": ["true"]})
        time.sleep(12)
        base = f"http://127.0.0.1:{b.port}"
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_context(viewport={"width": 1300, "height": 860}).new_page()
            shots = [  # (address, what shows the page is drawn, file)
                (f"/ui/#token={b.token}&/jobs", "#jobs-body tr", "dashboard-jobs.png"),
                (f"/ui/#/job/{train}", "chart", "dashboard-job.png"),
                (f"/ui/#/compare/{train},{done['job_id']}", "compare-chart", "dashboard-compare.png"),
                ("/ui/#/gpus", "#gpus tr", "dashboard-gpus.png"),
                ("/ui/#/queue", "#queue tr", "dashboard-queue.png"),
                ("/docs", "section.operation", "docs-api.png"),
            ]
            for address, drawn, name in shots:
                page.goto(base + address)
                if drawn.startswith(("#", "section")):
                    page.wait_for_selector(drawn)
                else:  # a chart: once it has drawn a curve
                    page.wait_for_function(f"() => Number(document.querySelector('#{drawn}')?.dataset.points) > 50")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / name), full_page=True)
            browser.close()
        api.post(f"/jobs/{train}/stop")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--screenshots", type=Path, default=None, metavar="DIR")
    args = ap.parse_args()
    if CHROMIUM is None:
        sys.exit("no chromium binary (apt-get install chromium)")
    if args.screenshots:
        screenshots(args.screenshots)
    if args.jobs == 0:
        return  # screenshots only
    assets = {p.name: p.stat().st_size for p in sorted(STATIC.iterdir())}
    with bench_stack("ty-bench-ui-") as b:
        api = b.start_gateway()
        t0 = time.perf_counter()
        submit_jobs(api, {"trainer": "command", "command": ["true"], "gpus": 0, "hold": True, "name": "held"},
                    args.jobs)
        stored = api.get("/jobs", params={"limit": 1}).json()["total"]
        made_s = time.perf_counter() - t0
        paints = first_paint(f"http://127.0.0.1:{b.port}", b.token)
    rows = [
        (f"(a) first paint of the jobs page, {stored:,} jobs", f"{paints[len(paints) // 2] * 1e3:.0f} / "
         f"{paints[-1] * 1e3:.0f} ms", f"median / max of {len(paints)}; budget < 1,000 ms "
         f"({args.jobs:,} held jobs submitted in {made_s:.0f} s)"),
        ("(a) the page's own assets", f"{sum(assets.values()) / 1024:.1f} KB",
         ", ".join(f"{name} {size / 1024:.1f} KB" for name, size in assets.items()) + " (uncompressed)"),
    ]
    print_table(rows, 18)


if __name__ == "__main__":
    main()
