"""Both earlier systems' curl examples (../shared/seeds/), as written, against a live stack:
only host, port and the token header change. The agent has two simulated GPUs and the stand-in
`swift` and `deepspeed` of tests/trainers/bin on its PATH (as a GPU host has the real ones)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import WORKSPACE
from trainyard.stack import Stack, free_port

TRAINERS = Path(__file__).parents[1] / "trainers"


@dataclass
class Seeds:
    base: str
    headers: dict[str, str]

    def call(self, method: str, path: str, json: dict | None = None) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", json=json, headers=self.headers, timeout=30)

    def status(self, job: str) -> str:
        return self.call("GET", f"/api/v1/training/jobs/{job}/status").json()["status"]

    def wait(self, job: str, statuses: set[str], timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while (status := self.status(job)) not in statuses:
            assert time.monotonic() < deadline, f"{job} still {status}"
            time.sleep(0.05)
        return status


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeds]:
    tmp = tmp_path_factory.mktemp("seeds")
    stack = Stack()
    nats_port, port = free_port(), free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    try:
        stack.start_nats(tmp / "nats", nats_port)
        (tmp / "gw").mkdir()
        token = TokenStore(tmp / "gw" / TOKENS_FILE).create("admin")
        # Seed 000's example trains on /data/train: this deployment allows paths under /data.
        roots = {"TRAINYARD_ALLOWED_ROOTS": f"/data{os.pathsep}{WORKSPACE}"}
        stack.start_gateway(tmp / "gw", port, url, env=roots)
        stack.start_agent("gpu-1", tmp / "work", url, tmp / "agent.log", "--simulate-gpus", "2x80GB",
                          "--heartbeat-interval-s", "0.3", "--diffusion-pipe-dir", str(TRAINERS / "diffusion-pipe"),
                          env={**roots, "PATH": f"{TRAINERS / 'bin'}{os.pathsep}{os.environ['PATH']}",
                               "STANDIN_STEP_S": "0.05"})
        s = Seeds(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 20
        while s.call("GET", "/api/v1/training/system/status").json()["hosts_online"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield s
    finally:
        stack.stop()


def envelope(r: httpx.Response, code: int) -> dict:
    body = r.json()
    assert r.status_code == code and body["code"] == code, r.text
    assert set(body) == {"code", "message", "data", "timestamp"} and isinstance(body["timestamp"], int)
    return body["data"]


def test_seed_000_curl_examples(seeds: Seeds) -> None:
    # 1. start a training task (verbatim body from seed 000's README)
    body = {
        "gpu_id": 0, "model_type": "flux", "description": "Flux LoRA 训练",
        "dataset": {"resolutions": [512], "directories": [{"path": "/data/train", "num_repeats": 5}]},
        "config": {"epochs": 10, "micro_batch_size_per_gpu": 1, "optimizer": {"type": "adamw_optimi", "lr": 5e-5}},
    }
    task = envelope(seeds.call("POST", "/api/v1/training/start", body), 201)["task_id"]
    seeds.wait(task, {"running"})
    # the same GPU again: seed 000 answered 409
    busy = seeds.call("POST", "/api/v1/training/start", body)
    assert busy.status_code == 409 and busy.json()["code"] == 409 and "GPU 0" in busy.json()["message"]
    time.sleep(0.8)
    # 2. progress
    progress = envelope(seeds.call("GET", f"/api/v1/training/{task}/progress"), 200)
    assert progress["current_step"] >= 1 and "progress_percent" in progress and "eta_seconds" in progress
    assert "loss" in progress["metrics"]
    # 3. logs
    logs = envelope(seeds.call("GET", f"/api/v1/training/{task}/logs?type=train&tail=20"), 200)["logs"]
    assert 0 < len(logs) <= 20 and {"timestamp", "level", "message"} <= set(logs[0])
    # list, detail, metrics (the README's endpoint list)
    listed = envelope(seeds.call("GET", "/api/v1/training/list?status=running&gpu_id=0&limit=10&offset=0"), 200)
    assert [t["task_id"] for t in listed["tasks"]] == [task] and listed["total"] == 1
    detail = envelope(seeds.call("GET", f"/api/v1/training/{task}"), 200)
    assert detail["gpu_id"] == 0 and detail["model_type"] == "flux" and detail["log_path"]
    metrics = envelope(seeds.call("GET", f"/api/v1/training/{task}/metrics?metric=loss&type=step&limit=100"), 200)
    assert metrics["metric"] == "loss" and metrics["data"][0]["step"] == 1
    # 4. stop, gracefully
    stopped = envelope(seeds.call("POST", f"/api/v1/training/stop/{task}", {"force": False}), 200)
    assert stopped["task_id"] == task
    assert seeds.wait(task, {"stopped"}, timeout_s=30) == "stopped"
    # errors keep the envelope
    missing = seeds.call("GET", "/api/v1/training/train_20250212_07000001")
    assert missing.status_code == 404 and missing.json()["code"] == 404 and missing.json()["data"] is None
    bad = seeds.call("POST", "/api/v1/training/start", {**body, "model_type": "flux-9000"})
    assert bad.status_code == 400 and "model_type" in bad.json()["message"]


def test_seed_002_curl_examples(seeds: Seeds) -> None:
    create = {"data_path": "AI-ModelScope/coco#20000", "model_path": "Qwen/Qwen2.5-VL-7B-Instruct",
              "output_dir": "output/training_001"}
    # basic usage: a GPU is free, the job starts
    r = seeds.call("POST", "/api/v1/training/jobs", create)
    assert r.status_code == 201 and {"job_id", "status", "message"} <= set(r.json())
    first = r.json()["job_id"]
    # the whole workflow: create, start, progress, logs, export once finished
    assert seeds.call("POST", f"/api/v1/training/jobs/{first}/start").status_code == 200
    assert seeds.call("GET", f"/api/v1/training/jobs/{first}/progress").status_code == 200
    logs = seeds.call("GET", f"/api/v1/training/jobs/{first}/logs?limit=50")
    assert logs.status_code == 200 and len(logs.json()["lines"]) <= 50
    assert seeds.wait(first, {"succeeded"}) == "succeeded"
    export = seeds.call("POST", f"/api/v1/training/jobs/{first}/export")
    assert export.status_code == 200 and export.json()["checkpoint"].endswith("checkpoint-10")
    # priorities: with both GPUs busy (a long job holds the other) the next ones queue
    holder = seeds.call("POST", "/api/v1/training/jobs", {"trainer": "command", "gpus": 1,
                        "command": ["python", "-c", "import time; time.sleep(30)"]}).json()["job_id"]
    seeds.wait(holder, {"running"})
    seeds.call("POST", "/api/v1/training/queue/processor/stop")
    urgent = seeds.call(
        "POST", "/api/v1/training/jobs", {**create, "output_dir": "output/urgent_training", "priority": 9}
    )
    low = seeds.call(
        "POST", "/api/v1/training/jobs", {**create, "output_dir": "output/low_priority_training", "priority": 1}
    )
    for r in (urgent, low):
        assert r.status_code == 201 and r.json()["status"] == "queued"
        assert {"queue_position", "estimated_wait_time"} <= set(r.json())
    urgent, low = urgent.json()["job_id"], low.json()["job_id"]
    # queue management
    queue = seeds.call("GET", "/api/v1/training/queue")
    assert queue.status_code == 200 and [j["job_id"] for j in queue.json()["jobs"]][:2] == [urgent, low]
    assert seeds.call("POST", "/api/v1/training/queue/process").status_code == 200
    place = seeds.call("GET", f"/api/v1/training/queue/{low}/status")
    assert place.status_code == 200 and place.json()["position"] == 2
    assert seeds.call("DELETE", f"/api/v1/training/queue/{low}").status_code == 200
    assert seeds.call("POST", "/api/v1/training/queue/processor/start").status_code == 200
    processor = seeds.call("GET", "/api/v1/training/queue/processor/status")
    assert processor.status_code == 200 and processor.json()["running"] is True
    # system information
    for path in ("/api/v1/training/gpus", "/api/v1/training/system/status", "/api/v1/training/health",
                 "/api/v1/training/jobs", f"/api/v1/training/jobs/{first}", f"/api/v1/training/jobs/{first}/status",
                 f"/api/v1/training/jobs/{first}/events"):
        assert seeds.call("GET", path).status_code == 200, path
    # delete: 409 while active, 204 once ended, then gone from every view (events stay)
    assert seeds.call("DELETE", f"/api/v1/training/jobs/{holder}").status_code == 409
    seeds.call("POST", f"/api/v1/training/jobs/{holder}/stop", {"force": True})
    seeds.wait(holder, {"stopped"})
    seeds.wait(urgent, {"succeeded"})
    assert seeds.call("DELETE", f"/api/v1/training/jobs/{urgent}").status_code == 204
    assert seeds.call("GET", f"/api/v1/training/jobs/{urgent}").status_code == 404
    assert urgent not in [j["job_id"] for j in seeds.call("GET", "/api/v1/training/jobs?limit=100").json()["jobs"]]
