"""Watching the training, not only the process (issue 19): the time limit, like Slurm's --time."""

from __future__ import annotations

import json
import sys
import time

from tests.conftest import Cluster, cli

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"


def test_a_job_past_its_time_limit_is_stopped_and_fails_saying_so(cluster: Cluster) -> None:
    api = cluster.api
    began = time.monotonic()
    job = api.submit([sys.executable, "-c", SLEEPER], max_runtime_s=1, stop_grace_s=2)
    final = api.wait(job, timeout_s=30)
    assert final["status"] == "failed" and final["reason"].startswith("time limit of 1s reached"), final
    assert time.monotonic() - began < 15  # SIGTERM at the limit; the sleeper dies of it at once
    notes = [ln["text"] for ln in api.logs(job, type="system")]
    assert any("time limit of 1s reached: stopping it" in t for t in notes), notes
    quick = api.submit([sys.executable, "-c", "print('in time')"], max_runtime_s=30)
    assert api.wait(quick)["status"] == "succeeded"


def test_a_time_limit_must_be_a_positive_number_of_seconds(cluster: Cluster) -> None:
    for bad in (0, -5, "an hour"):
        r = cluster.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "max_runtime_s": bad})
        assert r.status_code == 422 and r.json()["field"] == "max_runtime_s", r.text


def test_the_cli_sets_a_time_limit(cluster: Cluster) -> None:
    made = cli(cluster, "submit", "--json", "--time-limit", "1", "--", sys.executable, "-c", SLEEPER)
    assert made.returncode == 0, made.stderr
    final = cluster.api.wait(json.loads(made.stdout)["job_id"], timeout_s=30)
    assert final["status"] == "failed" and "time limit of 1s" in final["reason"], final
