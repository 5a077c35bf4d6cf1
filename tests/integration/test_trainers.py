"""Trainer adapters end to end: request -> files -> argv -> parsed events -> API.

`hf` runs a real, tiny transformers Trainer on the CPU (CI installs torch and transformers);
`swift` runs a stand-in `swift` executable that prints ms-swift's exact formats."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TRAINERS, WORKSPACE, Cluster

BIN = TRAINERS / "bin"


def series(cluster: Cluster, job: str, name: str) -> list[dict]:
    r = cluster.api.client.get(f"/jobs/{job}/metrics", params={"name": name})
    assert r.status_code == 200, r.text
    return r.json()["series"].get(name, [])


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="torch/transformers not installed (CI installs them: .ci/run)")
def test_a_real_tiny_transformers_trainer(cluster: Cluster) -> None:
    r = cluster.api.client.post("/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "tiny_hf.py"), "gpus": 0,
        "args": ["--output_dir", "out", "--max_steps", "12", "--logging_steps", "2", "--save_steps", "6"],
    })
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    final = cluster.api.wait(job, timeout_s=180)
    assert final["status"] == "succeeded", final
    loss = series(cluster, job, "loss")
    assert [p["step"] for p in loss] == [2, 4, 6, 8, 10, 12]  # the trainer's own steps
    assert all(p["epoch"] is not None for p in loss)
    assert series(cluster, job, "train_loss")[0]["step"] == 12
    progress = cluster.api.client.get(f"/jobs/{job}/progress").json()
    assert (progress["step"], progress["total_steps"], progress["percent"]) == (12, 12, 100.0)
    detail = cluster.api.client.get(f"/jobs/{job}").json()
    assert sorted(c["step"] for c in detail["checkpoints"]) == [6, 12]
    assert detail["anomalies"] == []  # a healthy run: the watchdog says nothing
    assert all(Path(c["path"], "trainer_state.json").is_file() for c in detail["checkpoints"])
    lines = [ln["text"] for ln in cluster.api.logs(job)]
    assert not any("%|" in t for t in lines)  # the tqdm bar is progress, not a flood of lines
    assert sum(t.startswith("{'loss'") for t in lines) == 6


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="torch/transformers not installed (CI installs them: .ci/run)")
def test_a_real_trainer_whose_loss_goes_nan_is_stopped_at_that_step(cluster: Cluster) -> None:
    """An absurd learning rate: the tiny model's loss is nan from step 2 on (transformers 5.x
    logs it as the string 'nan'; the hook reports it as JSON's NaN)."""
    r = cluster.api.client.post("/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "tiny_hf.py"), "gpus": 0, "on_nan": "stop", "stop_grace_s": 5,
        "args": ["--output_dir", "out", "--max_steps", "2000", "--logging_steps", "1", "--save_steps", "1000",
                 "--learning_rate", "1e30"],
    })
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    final = cluster.api.wait(job, timeout_s=180)
    assert final["status"] == "failed" and final["reason"].startswith("loss was nan at step 2 ("), final
    events = [e["data"] for e in cluster.api.client.get(f"/jobs/{job}/events").json() if e["type"] == "anomaly"]
    assert [(e["kind"], e["metric"], e["step"]) for e in events] == [("nan", "loss", 2)], events
    steps = [p["step"] for p in series(cluster, job, "loss")]
    assert steps[:2] == [1, 2] and steps[-1] < 2000, steps  # stopped, long before its end


def test_swift_job_as_seed_002_sends_it(cluster: Cluster) -> None:
    r = cluster.api.client.post("/jobs", json={
        "data_path": "AI-ModelScope/coco#20000", "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
        "output_dir": "output/training_001", "priority": 9, "gpus": 0,
        "env": {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    })
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    final = cluster.api.wait(job, timeout_s=60)
    assert final["status"] == "succeeded", final
    detail = cluster.api.client.get(f"/jobs/{job}").json()
    assert detail["trainer"] == "swift"
    run_dir = Path(detail["run_dir"])
    recorded = json.loads((run_dir / "swift-argv.json").read_text())
    out = run_dir.parent / "output" / "training_001"
    flags = dict(zip(recorded["argv"][1::2], recorded["argv"][2::2], strict=False))
    assert recorded["argv"][0] == "sft" and flags["--output_dir"] == str(out)
    assert flags["--model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and flags["--add_version"] == "false"
    assert [(p["step"], p["value"]) for p in series(cluster, job, "loss")] == [(5, 1.23456789), (10, 1.061)]
    assert [p["step"] for p in series(cluster, job, "eval_loss")] == [10]
    assert series(cluster, job, "train_speed(s/it)")[0]["value"] == 1.003
    progress = cluster.api.client.get(f"/jobs/{job}/progress").json()
    assert (progress["step"], progress["total_steps"]) == (10, 10)
    assert sorted((c["step"], c["path"]) for c in detail["checkpoints"]) == [
        (5, str(out / "checkpoint-5")), (10, str(out / "checkpoint-10"))]
    levels = {ln["text"]: ln["level"] for ln in cluster.api.logs(job, type="all")}
    assert levels["[INFO:swift] End time of running main: 2026-11-22 12:00:00"] == "INFO"


def test_a_missing_trainer_executable_fails_at_once_with_the_reason(cluster: Cluster) -> None:
    job = cluster.api.submit(["no-such-trainer-binary", "--epochs", "1"])
    final = cluster.api.wait(job, timeout_s=20)
    assert final["status"] == "failed" and final["reason"] == f"no-such-trainer-binary not found on host {cluster.host}"


def test_a_jobs_path_does_not_choose_the_trainer_executable(cluster: Cluster, tmp_path: Path) -> None:
    """swift comes from the agent's PATH (security review C2): a job's PATH, even an admin's,
    does not pick another program."""
    decoy = tmp_path / "swift"
    decoy.write_text("#!/bin/sh\necho DECOY-RAN\n")
    decoy.chmod(0o755)
    r = cluster.api.client.post("/jobs", json={
        "trainer": "swift", "model_path": "m", "data_path": "d", "gpus": 0,
        "env": {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}})
    job = r.json()["job_id"]
    assert cluster.api.wait(job, timeout_s=60)["status"] == "succeeded"
    assert not any("DECOY-RAN" in line["text"] for line in cluster.api.logs(job))


def test_paths_in_trainer_requests_are_confined(cluster: Cluster) -> None:
    for body, field in (
        ({"trainer": "hf", "script": "/etc/passwd"}, "script"),
        ({"trainer": "hf", "script": "train.py"}, "script"),
        ({"trainer": "swift", "model_path": "/etc", "data_path": "d"}, "model_path"),
        ({"trainer": "swift", "model_path": "m", "data_path": "d", "output_dir": "../../escape"}, "output_dir"),
        ({"trainer": "swift", "model_path": "m", "data_path": "d", "output_dir": "/root/elsewhere"}, "output_dir"),
    ):
        r = cluster.api.client.post("/jobs", json={**body, "gpus": 0})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)


def test_diffusion_pipe_configs_it_would_reject_are_a_400_naming_the_key(cluster: Cluster) -> None:
    base = {"trainer": "diffusion-pipe", "model_type": "flux", "gpus": 0,
            "dataset": {"directories": [{"path": str(WORKSPACE)}]}, "config": {"epochs": 1}}
    for change, key in (
        ({"config": {"epochs": 1, "adapter": {"type": "lora", "rank": 8, "alpha": 8}}}, "config.adapter.alpha"),
        ({"model_type": "stable-cascade"}, "model_type"),
        ({"config": {"micro_batch_size_per_gpu": 1}}, "config.epochs"),
    ):
        r = cluster.api.client.post("/jobs", json={**base, **change})
        assert r.status_code == 400 and r.json()["field"] == key, r.text
    r = cluster.api.client.post("/jobs", json={**base, "dataset": {"directories": [{"path": "/etc"}]}})
    assert r.status_code == 422 and r.json()["field"] == "dataset.directories[0].path"


def test_diffusion_pipe_on_a_host_without_it_fails_at_once(cluster: Cluster) -> None:
    job = cluster.api.client.post("/jobs", json={
        "trainer": "diffusion-pipe", "model_type": "flux", "gpus": 0,
        "dataset": {"directories": [{"path": str(WORKSPACE)}]}, "config": {"epochs": 1}}).json()["job_id"]
    final = cluster.api.wait(job, timeout_s=20)
    assert final["status"] == "failed"
    assert final["reason"] == f"diffusion-pipe is not set up on host {cluster.host} (agent setting diffusion_pipe_dir)"


def wait_export(cluster: Cluster, job: str, export_id: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        exports = {e["export_id"]: e for e in cluster.api.client.get(f"/jobs/{job}").json()["exports"]}
        if exports.get(export_id, {}).get("status") not in (None, "running"):
            return exports[export_id]
        assert time.monotonic() < deadline, exports
        time.sleep(0.05)


def test_swift_export_is_a_tracked_step_with_its_result_path(cluster: Cluster) -> None:
    r = cluster.api.client.post("/jobs", json={
        "trainer": "swift", "model_path": "Qwen/Qwen2.5-VL-7B-Instruct", "data_path": "d#10", "gpus": 0,
        "env": {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}})
    job = r.json()["job_id"]
    assert cluster.api.client.post(f"/jobs/{job}/export").status_code in (409, 200)  # 409 while it runs
    assert cluster.api.wait(job, timeout_s=60)["status"] == "succeeded"
    latest = cluster.api.client.post(f"/jobs/{job}/export")
    assert latest.status_code == 200, latest.text
    assert latest.json()["checkpoint"].endswith("/checkpoint-10")
    done = wait_export(cluster, job, latest.json()["export_id"])
    assert done["status"] == "succeeded" and done["path"] == latest.json()["checkpoint"] + "-merged"
    assert Path(done["path"]).is_dir()
    named = cluster.api.client.post(f"/jobs/{job}/export", json={"checkpoint": "checkpoint-5"}).json()
    assert wait_export(cluster, job, named["export_id"])["path"].endswith("/checkpoint-5-merged")
    again = cluster.api.client.post(f"/jobs/{job}/export", json={"checkpoint": "checkpoint-5"})
    assert again.status_code == 409 and "exported already" in again.json()["detail"]  # refused up front
    assert cluster.api.client.post(f"/jobs/{job}/export", json={"checkpoint": "checkpoint-7"}).status_code == 404
    events = [e["type"] for e in cluster.api.client.get(f"/jobs/{job}/events").json()]
    assert events.count("export_requested") == 2 and events.count("export_finished") == 2
    command_job = cluster.api.submit([sys.executable, "-c", "print(1)"])
    cluster.api.wait(command_job)
    r = cluster.api.client.post(f"/jobs/{command_job}/export")
    assert r.status_code == 400 and "only swift jobs" in r.json()["detail"]


def traversal_forms(root: Path, outside: Path) -> list[str]:
    return [
        "../../../../etc/passwd", "../" * 12 + "etc", "/etc/passwd", "/etc", "/", "/root/.ssh/id_rsa",
        f"{root}/../../etc", f"{root}/./../..", f"{root}/sub/../../..", f"{root}/..",
        f"{root}-sibling/x", f"{root}x", "%2e%2e/%2e%2e/etc", "..%2f..%2fetc", "%2E%2E%2F%2E%2E",
        "..\\..\\etc", f"{root}\\..\\..\\etc", "．．/．．/etc", "..／..／etc", f"{root}/\uff0e\uff0e/\uff0e\uff0e",
        "/ｅｔｃ/passwd", f"{root}/link-out/passwd", f"{root}/link-out", "sub/../../../etc", "\x00/etc",
        str(outside),
    ]


def test_path_traversal_forms_are_all_refused(cluster: Cluster, tmp_path: Path) -> None:
    """`cwd`, `script`, dataset and output paths must lie under the allowed roots (the tests'
    workspace and stand-in trainers). A symlink inside a root that points out is refused too."""
    root = WORKSPACE
    (root / "link-out").symlink_to("/etc")
    forms = traversal_forms(root, tmp_path)
    assert len(forms) >= 20
    refused = []
    for form in forms:
        for body, field in (
            ({"trainer": "command", "command": ["true"], "cwd": form}, "cwd"),
            ({"trainer": "hf", "script": form if form.startswith("/") else f"{root}/{form}"}, "script"),
            ({"trainer": "diffusion-pipe", "model_type": "flux", "config": {"epochs": 1},
              "dataset": {"directories": [{"path": form}]}}, "dataset.directories[0].path"),
        ):
            r = cluster.api.client.post("/jobs", json={**body, "gpus": 0})
            assert r.status_code == 422 and r.json()["field"] == field, (form, field, r.text)
            refused.append(form)
    assert len(refused) == 3 * len(forms)
    ok = cluster.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "gpus": 0,
                                                "cwd": str(root / "sub" / ".." )})
    assert ok.status_code == 201  # inside a root, normalised


def test_resume_from_a_named_or_the_latest_checkpoint_and_retry(cluster: Cluster) -> None:
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    job = cluster.api.client.post("/jobs", json={"trainer": "swift", "model_path": "m", "data_path": "d",
                                                 "gpus": 0, "env": env}).json()["job_id"]
    assert cluster.api.wait(job, timeout_s=60)["status"] == "succeeded"
    names = sorted(Path(c["path"]).name for c in cluster.api.client.get(f"/jobs/{job}/checkpoints").json())
    assert names == ["checkpoint-10", "checkpoint-5"]
    assert cluster.api.client.post(f"/jobs/{job}/retry").status_code == 409  # it succeeded: resume instead
    r = cluster.api.client.post(f"/jobs/{job}/resume", json={"checkpoint": "checkpoint-5"})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "scheduled", "running", "succeeded")
    second = cluster.api.wait(job, timeout_s=60)
    assert second["status"] == "succeeded" and second["attempt"] == 2
    run_dir = Path(cluster.api.client.get(f"/jobs/{job}").json()["run_dir"])
    argv = json.loads((run_dir / "swift-argv.json").read_text())["argv"]
    out = run_dir.parent / "output"
    assert argv[argv.index("--resume_from_checkpoint") + 1] == str(out / "checkpoint-5")
    cluster.api.client.post(f"/jobs/{job}/resume")  # the latest: checkpoint-10 of attempt 2
    third = cluster.api.wait(job, timeout_s=60)
    argv = json.loads((Path(cluster.api.client.get(f"/jobs/{job}").json()["run_dir"]) / "swift-argv.json").read_text())[
        "argv"
    ]
    assert third["attempt"] == 3 and argv[argv.index("--resume_from_checkpoint") + 1] == str(out / "checkpoint-10")
    assert cluster.api.client.post(f"/jobs/{job}/resume", json={"checkpoint": "checkpoint-99"}).status_code == 404
    failing = cluster.api.submit(
        [sys.executable, "-c", "import os, sys; print(os.environ['TRAINYARD_ATTEMPT']); sys.exit(1)"]
    )
    assert cluster.api.wait(failing)["status"] == "failed"
    assert cluster.api.client.post(f"/jobs/{failing}/retry").status_code == 200
    again = cluster.api.wait(failing)
    assert again["status"] == "failed" and again["attempt"] == 2
    assert [ln["text"] for ln in cluster.api.logs(failing, attempt=2, type="train")] == ["2"]
