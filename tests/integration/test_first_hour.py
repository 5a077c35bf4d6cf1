"""The first hour, as a user tries it (user audit 2026-11; issue "the first hour"): each test
is a path of the README that broke or said the wrong thing."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TRAINERS, WORKSPACE, Cluster, cli
from tests.harness import Api, trainyard_up
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
    with trainyard_up("--data-dir", str(data_dir), "--port", str(port), "--nats-port", str(free_port()),
                      "--host", "ready", "--simulate-gpus", "1x80GB") as banner:
        assert "trainyard is up" in banner, banner
        token = (data_dir / "api-token").read_text().strip()
        # The banner's dashboard URL signs in at once: the token rides in the fragment.
        dashboard = banner.split("dashboard:", 1)[1].split("\n", 1)[0].strip()
        assert dashboard == f"{base}/ui/#token={token}", dashboard
        page = httpx.get(dashboard.split("#", 1)[0])
        assert page.status_code == 200 and '<script src="/ui/assets/app.js">' in page.text
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


def test_the_readmes_cli_submit_runs_the_script_where_the_user_stands(cluster: Cluster) -> None:
    project = WORKSPACE / "first-hour-project"
    project.mkdir(exist_ok=True)
    (project / "train.py").write_text("import os, sys\nprint(os.getcwd(), os.environ['LR'], sys.argv[1:])\n")
    made = cli(cluster, "submit", "--json", "--gpus", "0", "--env", "LR=1e-4", "--hold", "--priority", "7",
               "--max-retries", "1", "--", "python", "train.py", "--steps", "3", cwd=project)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    assert cluster.api.status(job)["status"] == "pending"  # held until released
    assert cluster.api.client.post(f"/jobs/{job}/start").status_code == 200
    assert cluster.api.wait(job)["status"] == "succeeded"
    said = [ln["text"] for ln in cluster.api.logs(job, type="train")]
    assert said == [f"{project} 1e-4 ['--steps', '3']"], said
    assert cluster.api.client.get(f"/jobs/{job}").json()["priority"] == 7


def test_cli_submit_from_outside_the_allowed_roots_ships_the_directory(cluster: Cluster, tmp_path: Path) -> None:
    """The README's `trainyard submit -- python train.py` from a directory the gateway may not
    point a job at (a fresh `up` allows only DATA/workspace): the code travels with the job
    instead of the job starting in an empty run dir and failing to open train.py."""
    project = tmp_path / "my-project"
    project.mkdir()
    (project / "train.py").write_text("import os\nprint('ran', open('data.txt').read().strip())\n")
    (project / "data.txt").write_text("42\n")
    made = cli(cluster, "submit", "--json", "--gpus", "0", "--", "python", "train.py", cwd=project)
    assert made.returncode == 0, made.stderr
    assert "is outside the gateway's allowed roots, so it is shipped with the job" in made.stderr, made.stderr
    job = json.loads(made.stdout)["job_id"]
    assert cluster.api.wait(job)["status"] == "succeeded", cluster.api.logs(job)
    assert [ln["text"] for ln in cluster.api.logs(job, type="train")] == ["ran 42"]


def test_cli_logs_prints_the_whole_log_and_tail_is_not_capped(cluster: Cluster) -> None:
    job = cluster.api.submit([sys.executable, "-c", "for i in range(25000): print('line', i)"])
    assert cluster.api.wait(job, timeout_s=60)["status"] == "succeeded"
    whole = cli(cluster, "logs", job, "--type", "train")
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.splitlines() == [f"line {i}" for i in range(25000)]
    tail = cli(cluster, "logs", job, "--type", "train", "--tail", "5000")
    assert tail.stdout.splitlines() == [f"line {i}" for i in range(20000, 25000)]
    api_tail = cluster.api.client.get(f"/jobs/{job}/logs", params={"type": "train", "tail": 5000}).json()["lines"]
    assert len(api_tail) == 5000 and api_tail[-1]["text"] == "line 24999"
    text = cluster.api.client.get(f"/jobs/{job}/logs.txt", params={"type": "train"})
    assert text.headers["content-type"].startswith("text/plain") and text.text.count("\n") == 25000


def test_cli_errors_are_one_line_and_say_where_the_token_came_from(cluster: Cluster, tmp_path: Path) -> None:
    missing = cli(cluster, "progress", "job_20250101_000000_abcdef")
    assert missing.returncode == 1 and missing.stdout == "" and missing.stderr.count("\n") == 1
    assert "404" in missing.stderr, missing.stderr
    refused = cli(cluster, "list", token="not-a-token")
    assert refused.returncode == 1 and "the token given with --token was refused" in refused.stderr
    none = subprocess.run([sys.executable, "-m", "trainyard", "list", "--url", cluster.url, "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "TRAINYARD_TOKEN"})
    assert none.returncode == 1 and "give --data-dir where `trainyard up` wrote api-token" in none.stderr
    job = cluster.api.submit([sys.executable, "-c", "print('x')"])
    cluster.api.wait(job)
    events = cli(cluster, "events", job)
    assert events.returncode == 0 and "1796" not in events.stdout and time.strftime("%Y-") in events.stdout


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="torch/transformers not installed (CI installs them: .ci/run)")
@pytest.mark.parametrize("every", [1, 5])
def test_a_trainer_with_logging_steps_set_in_its_code_gives_one_point_per_logged_step(
    cluster: Cluster, every: int,
) -> None:
    """The Trainer's own step for each logged dict (the hook on the trainer's PYTHONPATH), not
    the tqdm bar's on another stream: logging_steps is set in the script, not on its command
    line, so nothing else could know it; checkpoints come from the Trainer's saves."""
    r = cluster.api.client.post("/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "tiny_hf.py"), "gpus": 0,
        "args": ["--max_steps", "12", "--save_steps", "6"], "env": {"TINY_LOGGING_STEPS": str(every)},
    })
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    final = cluster.api.wait(job, timeout_s=180)
    assert final["status"] == "succeeded", final
    for name in ("loss", "grad_norm", "learning_rate"):
        points = cluster.api.client.get(f"/jobs/{job}/metrics", params={"name": name}).json()["series"][name]
        assert [p["step"] for p in points] == list(range(every, 13, every)), (name, points)
    texts = [ln["text"] for ln in cluster.api.logs(job)]
    assert not any(t.startswith("@trainyard-hf") for t in texts)  # reports, not log lines
    saved = sorted(Path(c["path"]).name for c in cluster.api.client.get(f"/jobs/{job}/checkpoints").json())
    assert saved == ["checkpoint-12", "checkpoint-6"]


def test_replies_and_wait_reasons_agree_with_the_job(cluster: Cluster) -> None:
    api = cluster.api
    r = api.client.post("/jobs", json={"trainer": "command", "command": [sys.executable, "-c", "1"], "hold": True})
    assert r.status_code == 201 and r.json()["status"] == "pending" and "held" in r.json()["message"], r.text
    held = r.json()["job_id"]
    stop = api.client.post(f"/jobs/{held}/stop", json={})
    assert stop.json()["status"] == "stopped" and "before it started" in stop.json()["message"], stop.text
    assert "SIGKILL" not in stop.json()["message"]
    nowhere = api.client.post("/jobs", json={"trainer": "command", "command": [sys.executable, "-c", "1"],
                                             "gpu_ids": [7]}).json()["job_id"]
    try:
        reason = next(e["waiting_reason"] for e in api.client.get("/queue").json()["jobs"] if e["job_id"] == nowhere)
        assert reason.startswith("no such GPU") and "busy" not in reason, reason
        assert api.client.post("/queue/processor/stop").status_code == 200
        paused = api.client.post("/jobs", json={"trainer": "command", "command": [sys.executable, "-c", "1"],
                                                "gpus": 0}).json()
        assert paused["status"] == "queued" and "processor is stopped" in paused["estimated_wait_time"], paused
        passed = api.client.post("/queue/process").json()
        assert passed["placed"] == [] and passed["still_waiting"] >= 2 and "stopped" in passed["message"], passed
    finally:
        api.client.post("/queue/processor/start")
        api.client.delete(f"/queue/{nowhere}")
    assert api.wait(paused["job_id"])["status"] == "succeeded"


def test_seed_compatibility_as_written(cluster: Cluster) -> None:
    api = cluster.api
    r = api.client.post("/jobs", json={"trainer": "command", "description": "Flux LoRA 训练", "name": "flux-lora",
                                       "command": [sys.executable, "-c", "for i in range(120): print('line', i)"]})
    job = r.json()["job_id"]
    assert api.wait(job)["status"] == "succeeded"
    seed000 = httpx.get(f"{cluster.url}/api/v1/training/list", params={"status": "completed,failed", "limit": 1000},
                        headers={"Authorization": f"Bearer {cluster.token}"})
    assert seed000.status_code == 200, seed000.text
    task = next(t for t in seed000.json()["data"]["tasks"] if t["task_id"] == job)
    assert task["description"] == "Flux LoRA 训练"
    latest = api.client.get(f"/jobs/{job}/logs", params={"limit": 50, "type": "train"}).json()["lines"]
    assert [ln["text"] for ln in latest] == [f"line {i}" for i in range(70, 120)]  # the latest 50, as seed 002
    first = api.client.get(f"/jobs/{job}/logs", params={"limit": 50, "type": "train", "after_seq": -1}).json()
    assert [ln["text"] for ln in first["lines"]][:2] == ["line 0", "line 1"]


def test_every_flag_of_every_command_says_what_it_does() -> None:
    from trainyard.cli import build_parser

    parser = build_parser()
    missing = []
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            for flag in sub._actions:
                if not flag.help and flag.dest != "help" and not isinstance(flag, argparse._SubParsersAction):
                    missing.append(f"{name} {'/'.join(flag.option_strings) or flag.dest}")
    assert missing == []


def test_who_submitted_a_job_is_shown_and_my_jobs_can_be_listed(cluster: Cluster) -> None:
    from gateway.api.auth import TOKENS_FILE, TokenStore

    alice = TokenStore(cluster.data_dir / TOKENS_FILE).create("admin", "alice-first-hour")
    job = cluster.api.submit([sys.executable, "-c", "1"])
    mine = cli(cluster, "submit", "--json", "--", sys.executable, "-c", "1", token=alice)
    theirs = json.loads(mine.stdout)["job_id"]
    assert cluster.api.client.get(f"/jobs/{theirs}").json()["submitted_by"] == "alice-first-hour"
    listed = json.loads(cli(cluster, "list", "--mine", "--json", token=alice).stdout)["jobs"]
    assert [j["job_id"] for j in listed] == [theirs] and listed[0]["submitted_by"] == "alice-first-hour"
    assert job not in [j["job_id"] for j in listed]


def test_cli_export_waits_for_its_result_and_a_failure_is_an_error(cluster: Cluster) -> None:
    env = {"PATH": f"{TRAINERS / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    job = cluster.api.client.post("/jobs", json={"trainer": "swift", "model_path": "m", "data_path": "d#10",
                                                 "gpus": 0, "env": env}).json()["job_id"]
    assert cluster.api.wait(job, timeout_s=60)["status"] == "succeeded"
    done = cli(cluster, "export", job, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded" and json.loads(done.stdout)["path"].endswith("-merged")
    # The merged directory goes away behind trainyard's back: swift's failure is the CLI's error.
    merged = Path(json.loads(done.stdout)["path"])
    (merged.parent / "checkpoint-5-merged").mkdir()
    failed = cli(cluster, "export", job, "--checkpoint", "checkpoint-5")
    assert failed.returncode == 1 and "failed" in failed.stderr, (failed.stdout, failed.stderr)
