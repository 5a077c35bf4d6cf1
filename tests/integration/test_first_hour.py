"""The first hour, as a user tries it (user audit 2026-11; issue "the first hour"): each test
is a path of the README that broke or said the wrong thing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import WORKSPACE, Cluster
from tests.harness import Api
from trainyard.stack import free_port

# The README's report lines: steps with totals, a checkpoint line with only a step, a metrics-only
# line, and a final epoch-only evaluation.
STEPS_THEN_PARTIAL_REPORTS = """
import json, os
def say(**kw): print("@trainyard " + json.dumps(kw), flush=True)
for step in range(1, 9):
    say(step=step, total_steps=10, epoch=step / 10, total_epochs=1, metrics={"loss": 1 / step})
os.makedirs("ckpt/step-8", exist_ok=True)
say(checkpoint="ckpt/step-8", step=8)
say(metrics={"lr": 0.001})
say(epoch=1, metrics={"eval_loss": 0.5})
raise SystemExit(int(os.environ["END_CODE"]))
"""


def _run(cluster: Cluster, code: int) -> tuple[dict, dict]:
    job = cluster.api.submit([sys.executable, "-c", STEPS_THEN_PARTIAL_REPORTS], env={"END_CODE": str(code)})
    final = cluster.api.wait(job)
    return final, cluster.api.client.get(f"/jobs/{job}/progress").json()


def test_progress_is_not_wiped_by_reports_with_fewer_fields(cluster: Cluster) -> None:
    final, progress = _run(cluster, 3)
    assert final["status"] == "failed"
    assert (progress["step"], progress["total_steps"], progress["total_epochs"]) == (8, 10, 1), progress
    assert progress["percent"] == 80.0 and progress["epoch"] == 1.0, progress


def test_a_succeeded_job_shows_its_final_step_and_100_percent(cluster: Cluster) -> None:
    final, progress = _run(cluster, 0)
    assert final["status"] == "succeeded"
    assert (progress["step"], progress["total_steps"], progress["percent"]) == (10, 10, 100.0), progress
    assert progress["eta_s"] == 0.0, progress


HUNDRED_STEPS = """
import json
for step in range(1, 101):
    print("@trainyard " + json.dumps({"step": step, "total_steps": 100, "epoch": step / 1000,
                                      "metrics": {"loss": 1 / step}}), flush=True)
raise SystemExit(1)
"""


def test_metric_history_downsamples_keeps_attempts_apart_and_fractional_epochs(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", HUNDRED_STEPS])
    assert api.wait(job)["status"] == "failed"
    for n in (1, 7, 10, 500):
        r = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss", "downsample": n})
        assert r.status_code == 200, r.text
        points = r.json()["series"]["loss"]
        assert len(points) == min(n, 100) and all(p["attempt"] == 1 for p in points)
    epochs = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss", "type": "epoch"}).json()["series"]["loss"]
    assert [p["epoch"] for p in epochs] == [round(s / 1000, 4) for s in range(1, 101)]
    assert api.client.post(f"/jobs/{job}/retry", json={}).status_code == 200
    assert api.wait(job, timeout_s=30)["attempt"] == 2 and api.wait(job)["status"] == "failed"
    latest = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss"}).json()["series"]["loss"]
    assert [p["step"] for p in latest] == list(range(1, 101)) and {p["attempt"] for p in latest} == {2}
    both = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss", "attempt": "all"}).json()["series"]["loss"]
    assert [(p["attempt"], p["step"]) for p in both] == [(a, s) for a in (1, 2) for s in range(1, 101)]


CHECKPOINTS_THEN_SAY_RESUME = """
import json, os
print("resume from", os.environ.get("TRAINYARD_RESUME_FROM", "-"), flush=True)
for step in (5, 10):
    path = os.path.abspath(f"ckpt/step-{step}")
    os.makedirs(path, exist_ok=True)
    print("@trainyard " + json.dumps({"checkpoint": path, "step": step}), flush=True)
"""


def test_resume_without_a_checkpoint_passes_the_latest_checkpoints_path(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", CHECKPOINTS_THEN_SAY_RESUME])
    assert api.wait(job)["status"] == "succeeded"
    saved = [c["path"] for c in api.client.get(f"/jobs/{job}/checkpoints").json()]
    assert [p.rsplit("/", 1)[-1] for p in saved] == ["step-5", "step-10"]
    r = api.client.post(f"/jobs/{job}/resume", json={})
    assert r.status_code == 200 and saved[-1] in r.json()["message"], r.text
    assert api.wait(job)["attempt"] == 2
    said = [ln["text"] for ln in api.logs(job, attempt=2, type="train")]
    assert said[0] == f"resume from {saved[-1]}", said


def test_up_is_ready_when_it_says_so_and_its_agent_reads_the_data_dirs_toml(tmp_path: Path) -> None:
    """When `up` prints that it is up, a seed 000 start pinned to GPU 0 sent at once is placed
    (not 409 "no host is online"); `[agent]` in DATA/trainyard.toml applies to up's agent."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "via the configured python"\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    (data_dir / "trainyard.toml").write_text(f'[agent]\npython = "{wrapper}"\n')
    dataset = WORKSPACE / "first-hour-dataset"
    dataset.mkdir(exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    up = subprocess.Popen([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir), "--port", str(port),
                           "--nats-port", str(free_port()), "--host", "ready", "--simulate-gpus", "1x80GB"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        said = []
        for line in up.stdout:
            said.append(line)
            if "trainyard is up" in line:
                break
        else:
            pytest.fail(f"up never said it was up: {''.join(said)}")
        token = (data_dir / "api-token").read_text().strip()
        body = {"gpu_id": 0, "model_type": "flux", "description": "at once",
                "dataset": {"resolutions": [512], "directories": [{"path": str(dataset), "num_repeats": 1}]},
                "config": {"epochs": 1}}
        r = httpx.post(f"{base}/api/v1/training/start", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        api = Api(base, token)
        script = WORKSPACE / "first-hour-hello.py"
        script.write_text("print('hello')\n")
        r = api.client.post("/jobs", json={"trainer": "hf", "script": str(script), "gpus": 0})
        assert r.status_code == 201, r.text
        job = r.json()["job_id"]
        assert api.wait(job)["status"] == "succeeded"
        assert [ln["text"] for ln in api.logs(job, type="train")] == ["via the configured python", "hello"]
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)
