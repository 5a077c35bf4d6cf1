"""Watching the training, not only the process (issue 19): the time limit, like Slurm's --time;
the watchdog (nan, stalls, idle GPUs); a job's GPU history."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Cluster, cli
from tests.harness import TRAINERS, Api, Rig, started_rig

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


# ---- the watchdog: nan, stalls, idle GPUs --------------------------------------------------

# Reports as a Python trainer writes them with `json.dumps`: a nan loss is `NaN` (no JSON).
DIVERGING = """
import json, sys, time
for step in range(1, 6):
    loss = float('nan') if step >= 3 else 1.0 / step
    print('@trainyard ' + json.dumps({'step': step, 'total_steps': 5, 'metrics': {'loss': loss, 'lr': 0.1}}),
          flush=True)
    time.sleep(0.1)
time.sleep(float(sys.argv[1]))
"""


def anomalies(api, job: str) -> list[dict]:
    return [e["data"] for e in api.client.get(f"/jobs/{job}/events").json() if e["type"] == "anomaly"]


def test_a_nan_loss_is_reported_once_and_the_points_are_kept(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", DIVERGING, "0"], on_nan="notify")
    assert api.wait(job)["status"] == "succeeded"  # notify: it runs on
    [found] = anomalies(api, job)  # once, not once per nan line
    assert (found["kind"], found["metric"], found["step"], found["value"], found["action"]) == (
        "nan", "loss", 3, "nan", "notify"), found
    assert found["detail"] == "loss was nan at step 3"
    loss = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss"}).json()["series"]["loss"]
    assert [(p["step"], p["value"]) for p in loss] == [(1, 1.0), (2, 0.5), (3, None), (4, None), (5, None)]
    detail = api.client.get(f"/jobs/{job}").json()
    assert detail["anomaly_kinds"] == ["nan"] and detail["anomalies"][0]["step"] == 3, detail
    listed = api.client.get("/jobs", params={"q": job}).json()["jobs"]
    assert [j["anomaly_kinds"] for j in listed] == [["nan"]]
    lines = [ln["text"] for ln in api.logs(job, type="system")]
    assert "trainyard: anomaly: loss was nan at step 3" in lines, lines


def test_on_nan_stop_stops_the_job_and_it_fails_saying_why(cluster: Cluster) -> None:
    api = cluster.api
    began = time.monotonic()
    job = api.submit([sys.executable, "-c", DIVERGING, "60"], on_nan="stop", stop_grace_s=2)
    final = api.wait(job, timeout_s=30)
    assert final["status"] == "failed" and final["reason"].startswith("loss was nan at step 3 ("), final
    assert time.monotonic() - began < 20  # not the minute it would have slept
    [found] = anomalies(api, job)
    assert found["action"] == "stop"


def test_a_metric_not_watched_raises_nothing(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", DIVERGING, "0"], nan_metrics=["accuracy"])
    assert api.wait(job)["status"] == "succeeded"
    assert anomalies(api, job) == []
    assert api.client.get(f"/jobs/{job}").json()["spec"]["nan_metrics"] == ["accuracy"]


def test_the_gateway_fills_in_the_watch_policy_a_job_leaves_out(cluster: Cluster) -> None:
    job = cluster.api.submit(["true"], on_stall="stop")
    spec = cluster.api.client.get(f"/jobs/{job}").json()["spec"]
    assert {k: spec[k] for k in ("nan_metrics", "on_nan", "stall_timeout_s", "on_stall", "idle_gpu_util_pct",
                                 "idle_timeout_s", "on_idle")} == {
        "nan_metrics": ["loss"], "on_nan": "notify", "stall_timeout_s": 1800.0, "on_stall": "stop",
        "idle_gpu_util_pct": 5.0, "idle_timeout_s": 1800.0, "on_idle": "notify"}


def test_a_bare_nan_of_transformers_4_is_read_and_caught(cluster: Cluster) -> None:
    r = cluster.api.client.post("/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "v4_dicts.py"), "gpus": 0, "args": ["--logging_steps", "1"]})
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert cluster.api.wait(job)["status"] == "succeeded"
    [found] = anomalies(cluster.api, job)
    assert (found["kind"], found["metric"], found["value"]) == ("nan", "loss", "nan"), found
    series = cluster.api.client.get(f"/jobs/{job}/metrics", params={"name": "loss,grad_norm"}).json()["series"]
    assert [p["value"] for p in series["loss"]] == [2.5, None, None]  # no point lost
    assert [p["value"] for p in series["grad_norm"]] == [1.25, None, None]


STEPS_THEN_HANGS = """
import sys, time
print('loading', flush=True)
print('@trainyard {"step": 1, "total_steps": 10}', flush=True)
time.sleep(60)
"""


def test_a_stalled_job_is_stopped_with_the_last_step_it_reached(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", STEPS_THEN_HANGS], stall_timeout_s=1.5, on_stall="stop", stop_grace_s=2)
    final = api.wait(job, timeout_s=30)
    assert final["status"] == "failed", final
    assert final["reason"].startswith("stalled: no new step for 1.5s (the last was step 1)"), final
    [found] = anomalies(api, job)
    assert (found["kind"], found["step"]) == ("stall", 1)


def test_a_quiet_job_that_reports_no_steps_stalls_on_output_and_notify_lets_it_run(cluster: Cluster) -> None:
    api = cluster.api
    quiet = "import time\nprint('working', flush=True)\ntime.sleep(4)\nprint('done', flush=True)\n"
    job = api.submit([sys.executable, "-c", quiet], stall_timeout_s=1.5)
    assert api.wait(job)["status"] == "succeeded"  # notify (the default): it finished
    [found] = anomalies(api, job)
    assert (found["kind"], found["detail"]) == ("stall", "stalled: no output for 1.5s"), found


def test_a_busy_job_does_not_stall(cluster: Cluster) -> None:
    api = cluster.api
    steady = ("import time\nfor s in range(1, 16):\n"
              "    print('@trainyard {\"step\": %d}' % s, flush=True)\n    time.sleep(0.2)\n")
    job = api.submit([sys.executable, "-c", steady], stall_timeout_s=1, on_stall="stop")
    assert api.wait(job)["status"] == "succeeded"
    assert anomalies(api, job) == []


@pytest.fixture(scope="module")
def gpu_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A host with two simulated GPUs, beating every 0.5 s."""
    with started_rig(tmp_path_factory.mktemp("watch"), {"w": "2x80GB"}) as rig:
        yield rig


# A trainer on simulated GPUs sets their utilisation: its first GPU busy, its second idle.
ONE_OF_TWO_GPUS = """
import time
print('@trainyard {"metrics": {"gpu_util.0": 90, "gpu_util.1": 1}}', flush=True)
time.sleep(60)
"""


def test_an_idle_gpu_of_a_job_is_found_and_its_gpu_history_kept(gpu_rig: Rig) -> None:
    api: Api = gpu_rig.api
    job = api.submit([sys.executable, "-c", ONE_OF_TWO_GPUS], gpus=2, idle_timeout_s=2, on_idle="stop",
                     stop_grace_s=2)
    final = api.wait(job, timeout_s=30)
    gpu_ids = final["gpu_ids"]
    assert final["status"] == "failed", final
    assert final["reason"].startswith(f"GPU {gpu_ids[1]} below 5% utilisation for 2s"), final
    [found] = anomalies(api, job)
    assert (found["kind"], found["gpus"]) == ("idle_gpu", [gpu_ids[1]]), found
    history = api.client.get(f"/jobs/{job}/gpus").json()
    by_gpu = {g["gpu_index"]: g for g in history["gpus"]}
    assert set(by_gpu) == set(gpu_ids), history
    assert by_gpu[gpu_ids[0]]["mean_utilization_pct"] == 90.0
    assert by_gpu[gpu_ids[1]]["mean_utilization_pct"] == 1.0
    assert all(g["attempt"] == 1 and g["samples"] for g in history["gpus"])
    assert 1.0 < history["mean_utilization_pct"] < 90.0
    detail = api.client.get(f"/jobs/{job}").json()
    assert detail["gpu_utilization_mean_pct"] == history["mean_utilization_pct"]
    rows = api.client.post(f"{api.base}/api/v1/sql", json={
        "sql": f"SELECT gpu_index, max(utilization_pct) FROM job_gpu_samples WHERE job_id = '{job}' "
               "GROUP BY gpu_index ORDER BY gpu_index"}).json()["rows"]
    assert rows == [[gpu_ids[0], 90.0], [gpu_ids[1], 1.0]], rows


def test_gpus_in_use_are_not_idle(gpu_rig: Rig) -> None:
    api: Api = gpu_rig.api
    busy = ("import time\nprint('@trainyard {\"gpu_util\": 97}', flush=True)\ntime.sleep(3)\n")
    job = api.submit([sys.executable, "-c", busy], gpus=1, idle_timeout_s=1, on_idle="stop")
    assert api.wait(job)["status"] == "succeeded"
    assert anomalies(api, job) == []
    used = api.client.get(f"/jobs/{job}/gpus").json()
    assert used["mean_utilization_pct"] == 97.0, used  # the top-level gpu_util set it


def test_the_cli_sets_the_watch_and_shows_what_it_found(cluster: Cluster) -> None:
    made = cli(cluster, "submit", "--json", "--on-nan", "stop", "--stall-timeout", "900", "--",
               sys.executable, "-c", DIVERGING, "30")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    assert cluster.api.wait(job)["status"] == "failed"
    spec = cluster.api.client.get(f"/jobs/{job}").json()["spec"]
    assert (spec["on_nan"], spec["stall_timeout_s"]) == ("stop", 900.0)
    shown = cli(cluster, "show", job)
    assert shown.stdout.rstrip().endswith("anomaly (attempt 1, stop): loss was nan at step 3"), shown.stdout
    listed = cli(cluster, "list", "--limit", "5")
    row = next(line for line in listed.stdout.splitlines() if job[-6:] in line)
    assert "nan" in row, listed.stdout


def test_a_retry_waiting_in_the_queue_is_marked_with_what_its_last_attempt_had(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", DIVERGING, "60"], on_nan="stop", stop_grace_s=2, max_retries=1,
                     retry_backoff_s=600)
    deadline = time.monotonic() + 30
    while (st := api.status(job))["status"] != "queued" or st["attempt"] != 1:
        assert time.monotonic() < deadline, st
        time.sleep(0.1)
    [entry] = [e for e in api.client.get("/queue").json()["jobs"] if e["job_id"] == job]
    assert entry["anomaly_kinds"] == ["nan"], entry
    api.client.post(f"/jobs/{job}/stop")
