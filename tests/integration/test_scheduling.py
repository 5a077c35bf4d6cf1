"""Scheduling across several agents (separate processes, simulated GPUs) against one real
nats-server: placement, priority and FIFO, gang, pinning, backfill without starvation, agent
refusal, host loss and return, no GPU ever shared, and scheduler fail-over.

The module runs its own nats-server so that no other test's agents or gateways take part.
Timeouts are short (heartbeat 0.3 s, offline after 1.5 s, lost 1.5 s later, lease 1.5 s)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats as nats_py
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from gateway.main import SHUTDOWN_LIMIT_S
from shared import subjects
from shared.commands import StartJob, StopJob
from shared.jobspec import CommandJob
from tests.conftest import WORKSPACE, Api, pid_alive
from tests.harness import publish_commands
from trainyard.stack import Stack, free_port

AGENTS = {"a": "2x80GB", "b": "2x80GB", "c": "4x40GB"}
DIFFUSION_PIPE_CHECKOUT = Path(__file__).parents[1] / "trainers" / "diffusion-pipe"
STANDIN_BIN = Path(__file__).parents[1] / "trainers" / "bin"
GATEWAY_FLAGS = ("--host-timeout-s", "1.5", "--host-lost-grace-s", "1.5", "--scheduler-lease-ttl-s", "1.5")


def sleeper(seconds: float) -> list[str]:
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


@dataclass
class GpuCluster:
    nats_url: str
    tmp: Path
    token: str
    stack: Stack
    api: Api
    gateway: subprocess.Popen
    data_dir: Path
    port: int
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_agent(self, host: str, gpus: str) -> subprocess.Popen:
        proc = self.stack.start_agent(host, self.tmp / f"work-{host}", self.nats_url,
                                      self.tmp / f"agent-{host}.log", "--simulate-gpus", gpus,
                                      "--heartbeat-interval-s", "0.3",
                                      "--diffusion-pipe-dir", str(DIFFUSION_PIPE_CHECKOUT),
                                      env={"PATH": f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}"})
        self.agents[host] = proc
        return proc

    def wait_online(self, count: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.api.client.get("/system/status").json()["hosts_online"] != count:
            assert time.monotonic() < deadline, self.api.client.get("/hosts").json()
            time.sleep(0.1)

    def submit(self, seconds: float, **fields) -> str:
        return self.api.submit(sleeper(seconds), **{"gpus": 1, **fields})

    def done(self, *jobs: str, timeout_s: float = 60.0) -> list[dict]:
        return [self.api.wait(j, timeout_s=timeout_s) for j in jobs]


@pytest.fixture(scope="module")
def gc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuCluster]:
    tmp = tmp_path_factory.mktemp("gpu-cluster")
    stack = Stack()
    nats_port, port = free_port(), free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    stack.start_nats(tmp / "nats", nats_port)
    data_dir = tmp / "g1"
    data_dir.mkdir()
    token = TokenStore(data_dir / TOKENS_FILE).create("admin")
    gateway = stack.start_gateway(data_dir, port, nats_url, "--replica", "g1", *GATEWAY_FLAGS)
    cluster = GpuCluster(nats_url, tmp, token, stack, Api(f"http://127.0.0.1:{port}", token),
                         gateway, data_dir, port)
    for host, gpus in AGENTS.items():
        cluster.start_agent(host, gpus)
    cluster.wait_online(len(AGENTS))
    yield cluster
    cluster.api.client.close()
    stack.stop()


def test_gpus_hosts_and_system_status_show_simulated_gpus(gc: GpuCluster) -> None:
    gpus = gc.api.client.get("/gpus").json()
    assert (gpus["total"], gpus["free"], gpus["simulated"]) == (8, 8, True)
    assert {(g["host"], g["index"]) for g in gpus["gpus"]} == {
        ("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1), ("c", 2), ("c", 3)}
    assert all(g["simulated"] and g["state"] == "free" and g["job_id"] is None for g in gpus["gpus"])
    hosts = gc.api.client.get("/hosts").json()
    assert [(h["host"], h["status"], h["gpus"]) for h in hosts] == [
        ("a", "online", 2),
        ("b", "online", 2),
        ("c", "online", 4),
    ]
    system = gc.api.client.get("/system/status").json()
    assert (system["hosts_online"], system["gpus_free"], system["queue_length"]) == (3, 8, 0)
    assert system["processor_running"] is True and system["scheduler_leader"].startswith("g1-")


def test_gang_placement_memory_floor_and_the_gpu_view(gc: GpuCluster) -> None:
    big = gc.submit(2.0, gpus=4)
    roomy = gc.submit(2.0, gpus=2, min_gpu_memory_gb=60)
    placed = {j: gc.api.wait(j, {"running"}) for j in (big, roomy)}
    assert (placed[big]["host"], sorted(placed[big]["gpu_ids"])) == ("c", [0, 1, 2, 3])
    assert placed[roomy]["host"] in ("a", "b") and sorted(placed[roomy]["gpu_ids"]) == [0, 1]
    using = {(g["host"], g["index"]): g["job_id"] for g in gc.api.client.get("/gpus").json()["gpus"]}
    assert [using[("c", i)] for i in range(4)] == [big] * 4
    assert all(st["status"] == "succeeded" for st in gc.done(big, roomy))


def test_priority_first_then_fifo_while_the_processor_is_paused_and_resumed(gc: GpuCluster) -> None:
    r = gc.api.client.post("/queue/processor/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    # Each job takes all of host a, so they run one after another, in queue order.
    order = [("p5-first", 5), ("p9-first", 9), ("p5-second", 5), ("p9-second", 9), ("p0", 0)]
    jobs = {name: gc.submit(0.3, gpus=2, host="a", priority=p, name=name) for name, p in order}
    queue = gc.api.client.get("/queue").json()
    assert [e["name"] for e in queue["jobs"]] == ["p9-first", "p9-second", "p5-first", "p5-second", "p0"]
    assert [e["position"] for e in queue["jobs"]] == [1, 2, 3, 4, 5]
    assert queue["processor_running"] is False
    assert all(e["waiting_reason"] == "the queue processor is stopped" for e in queue["jobs"])
    one = gc.api.client.get(f"/queue/{jobs['p5-second']}/status").json()
    assert (one["in_queue"], one["position"], one["queue_length"]) == (True, 4, 5)
    time.sleep(0.5)
    assert all(gc.api.status(j)["status"] == "queued" for j in jobs.values())
    assert gc.api.client.post("/queue/processor/start").json()["status"] == "running"
    finished = {name: gc.api.wait(j) for name, j in jobs.items()}
    assert all(st["status"] == "succeeded" for st in finished.values())
    by_start = sorted(finished, key=lambda n: finished[n]["started_s"])
    assert by_start == ["p9-first", "p9-second", "p5-first", "p5-second", "p0"]


def test_pinned_gpu_busy_waits_or_is_refused_with_409(gc: GpuCluster) -> None:
    holder = gc.submit(30, gpu_ids=[1], host="b")
    gc.api.wait(holder, {"running"})
    r = gc.api.client.post("/jobs", json={"trainer": "command", "command": sleeper(0.1),
                                          "gpu_ids": [1], "host": "b", "if_busy": "reject"})
    assert r.status_code == 409 and "GPU 1 on b" in r.json()["detail"]
    waiter = gc.submit(0.1, gpu_ids=[1], host="b")
    status = gc.api.status(waiter)
    assert status["status"] == "queued" and "GPUs 1 on b" in status["waiting_reason"]
    gc.api.client.post(f"/jobs/{holder}/stop", json={"force": True})
    done = gc.api.wait(waiter)
    assert (done["status"], done["host"], done["gpu_ids"]) == ("succeeded", "b", [1])


def test_a_big_job_is_not_starved_and_small_ones_backfill_elsewhere(gc: GpuCluster) -> None:
    first = [gc.submit(1.0, host="c") for _ in range(4)]
    for j in first:
        gc.api.wait(j, {"running"})
    big = gc.submit(0.5, gpus=4, host="c")
    later = [gc.submit(0.5, host="c") for _ in range(6)]
    elsewhere = gc.submit(0.5)  # may backfill on a or b: the big job cannot use those
    assert gc.api.status(big)["waiting_reason"].startswith("needs 4 GPUs")
    results = {
        j: st for j, st in zip([*first, big, *later, elsewhere], gc.done(*first, big, *later, elsewhere), strict=False)
    }
    assert all(st["status"] == "succeeded" for st in results.values())
    assert results[big]["started_s"] < min(results[j]["started_s"] for j in later)
    assert results[elsewhere]["host"] in ("a", "b")
    assert results[elsewhere]["started_s"] < results[big]["started_s"]


async def _start_directly(gc: GpuCluster, host: str, job_id: str, gpu: int, seconds: float) -> None:
    command = StartJob(job_id=job_id, attempt=1, ts_s=time.time(), gpu_ids=[gpu],
                       spec=CommandJob(command=sleeper(seconds), gpus=1))
    await publish_commands(gc.nats_url, gc.stack.connect_options(), subjects.cmd(host, "start"), command)


async def _refusals(gc: GpuCluster, job_id: str, timeout_s: float) -> list[str]:
    nc = await nats_py.connect(gc.nats_url, **gc.stack.connect_options())
    js = nc.jetstream()
    sub = await js.subscribe(subjects.job_event(job_id, "refused", "a"), ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=timeout_s)
        return [msg.data.decode()]
    finally:
        await nc.close()


def test_the_agent_refuses_a_gpu_it_is_already_using(gc: GpuCluster) -> None:
    """Two starts for the same GPU reach the agent (as a scheduler with a stale view could send):
    the second is refused with a reason, and only the first runs."""
    asyncio.run(_start_directly(gc, "a", "job_outside_1", 0, 1.0))
    asyncio.run(_start_directly(gc, "a", "job_outside_2", 0, 1.0))
    refusal = asyncio.run(_refusals(gc, "job_outside_2", 10.0))
    assert "GPU 0 is busy with job_outside_1" in refusal[0]


def test_host_loss_retries_elsewhere_and_the_returning_host_is_fenced(gc: GpuCluster) -> None:
    agent_d = gc.start_agent("d", "1x96GB")
    gc.wait_online(4)
    job = gc.submit(6.0, min_gpu_memory_gb=90, max_retries=1, retry_backoff_s=0)
    first = gc.api.wait(job, {"running"})
    assert first["host"] == "d" and first["attempt"] == 1
    old_pid = gc.api.client.get(f"/jobs/{job}").json()["pid"]
    os.kill(agent_d.pid, signal.SIGSTOP)  # the host goes silent; its trainer keeps running
    try:
        queued = gc.api.wait(job, {"queued"}, timeout_s=15)
        assert "sent no heartbeat" in queued["reason"] and "retry 1 of 1" in queued["reason"]
        hosts = {h["host"]: h["status"] for h in gc.api.client.get("/hosts").json()}
        assert hosts["d"] == "offline"
        assert "no online GPU has that much memory" in gc.api.status(job)["waiting_reason"]
        assert pid_alive(old_pid)
    finally:
        os.kill(agent_d.pid, signal.SIGCONT)
    # Back online: the stale attempt is stopped by the scheduler, then the job runs again there.
    deadline = time.monotonic() + 20
    while pid_alive(old_pid):
        assert time.monotonic() < deadline, "the returning host's stale attempt was not fenced"
        time.sleep(0.1)
    final = gc.api.wait(job, timeout_s=30)
    assert final["status"] == "succeeded" and final["attempt"] >= 2 and final["host"] == "d"
    events = [e["type"] for e in gc.api.client.get(f"/jobs/{job}/events").json()]
    assert "lost" in events
    agent_d.send_signal(signal.SIGTERM)  # a clean stop says goodbye: offline at once
    agent_d.wait(10)
    hosts = {h["host"]: h["status"] for h in gc.api.client.get("/hosts").json()}
    assert hosts["d"] == "offline"


def test_a_failing_job_is_retried_as_new_attempts_each_with_its_own_logs(gc: GpuCluster) -> None:
    script = "import os, sys; print('attempt', os.environ['TRAINYARD_ATTEMPT']); sys.exit(3)"
    job = gc.api.submit([sys.executable, "-c", script], gpus=1, max_retries=2, retry_backoff_s=0.2)
    final = gc.api.wait(job)
    assert (final["status"], final["exit_code"]) == ("failed", 3)
    events = gc.api.client.get(f"/jobs/{job}/events").json()
    ran = [e["attempt"] for e in events if e["type"] == "exited"]
    assert len(ran) == 3 and ran == sorted(set(ran)) and final["attempt"] == ran[-1]
    for attempt in ran:
        lines = [ln["text"] for ln in gc.api.logs(job, attempt=attempt, type="train")]
        assert lines == [f"attempt {attempt}"]


def test_automatic_retries_back_off_and_say_so(gc: GpuCluster) -> None:
    """A crash loop does not burn every retry in a second (reliability): each retry waits
    retry_backoff_s, doubled per failure, and the queue says why the job waits."""
    job = gc.api.submit([sys.executable, "-c", "import sys; sys.exit(1)"], gpus=1, max_retries=2, retry_backoff_s=1.5)
    deadline = time.monotonic() + 20
    while (st := gc.api.status(job))["attempt"] < 1 or st["status"] != "queued":  # the first attempt failed
        assert time.monotonic() < deadline and st["status"] not in ("failed", "succeeded"), st
        time.sleep(0.02)
    assert "retry back-off" in (st["waiting_reason"] or ""), st
    final = gc.api.wait(job, timeout_s=40)
    assert final["status"] == "failed" and final["attempt"] == 3
    events = gc.api.client.get(f"/jobs/{job}/events").json()
    exited = {e["attempt"]: e["ts_s"] for e in events if e["type"] == "exited"}
    scheduled = {e["attempt"]: e["ts_s"] for e in events if e["type"] == "scheduled"}
    assert scheduled[2] - exited[1] >= 1.5 and scheduled[3] - exited[2] >= 3.0, (exited, scheduled)


def test_concurrent_submits_over_several_agents_never_share_a_gpu(gc: GpuCluster) -> None:
    jobs: list[str] = []
    lock = threading.Lock()

    def submitter(n: int) -> None:
        api = Api(gc.api.base, gc.token)
        for i in range(n):
            job = api.submit(sleeper(0.2 + 0.1 * (i % 3)), gpus=1 + (i % 2))
            with lock:
                jobs.append(job)

    threads = [threading.Thread(target=submitter, args=(6,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = gc.done(*jobs, timeout_s=120)
    assert len(results) == 30 and all(r["status"] == "succeeded" for r in results)
    intervals: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in results:
        for g in r["gpu_ids"]:
            intervals.setdefault((r["host"], g), []).append((r["started_s"], r["finished_s"]))
    for gpu, spans in intervals.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two jobs overlapped on {gpu}"


def test_a_second_gateway_takes_over_scheduling_and_a_pause_survives_restarts(gc: GpuCluster) -> None:
    data_dir = gc.tmp / "g2"
    data_dir.mkdir()
    (data_dir / TOKENS_FILE).write_bytes((gc.data_dir / TOKENS_FILE).read_bytes())
    port = free_port()
    g2 = gc.stack.start_gateway(data_dir, port, gc.nats_url, "--replica", "g2", *GATEWAY_FLAGS)
    try:
        api2 = Api(f"http://127.0.0.1:{port}", gc.token)
        status = api2.client.get("/queue/processor/status").json()
        assert status["leader"].startswith("g1-") and status["this_replica_leads"] is False
        # The processor is paused through g2; g1 (leader) obeys; the pause outlives g1.
        assert api2.client.post("/queue/processor/stop").json()["status"] == "stopped"
        gc.gateway.send_signal(signal.SIGKILL)
        gc.gateway.wait()
        job = api2.submit(sleeper(0.1), gpus=1)
        deadline = time.monotonic() + 15
        while not api2.client.get("/queue/processor/status").json()["this_replica_leads"]:
            assert time.monotonic() < deadline, "g2 never took the scheduler lease over"
            time.sleep(0.1)
        time.sleep(0.5)
        assert api2.status(job)["status"] == "queued"  # still paused under the new leader
        assert api2.client.post("/queue/process").json()["placed"] == []
        api2.client.post("/queue/processor/start")
        assert api2.wait(job)["status"] == "succeeded"
        # g1 comes back; g2 keeps the lease; the queue processor state is the same everywhere.
        gc.gateway = gc.stack.start_gateway(gc.data_dir, gc.port, gc.nats_url, "--replica", "g1", *GATEWAY_FLAGS)
        deadline = time.monotonic() + 15
        while not (st1 := gc.api.client.get("/queue/processor/status").json())["running"]:
            # g1's projection catches up with the resume g2 recorded while g1 was down
            assert time.monotonic() < deadline, st1
            time.sleep(0.1)
        assert st1["leader"].startswith("g2-")
        g2.send_signal(signal.SIGTERM)  # a clean stop releases the lease: g1 takes over at once
        # A hung shutdown ends at SHUTDOWN_LIMIT_S with every thread's stack in the log.
        g2.wait(SHUTDOWN_LIMIT_S + 5)
        # (uvicorn re-raises the SIGTERM it caught once it has shut down: -15 is a clean stop)
        assert g2.returncode in (0, -signal.SIGTERM), _pending_tasks_of(data_dir / "logs" / "gateway.log")
        job2 = gc.api.submit(sleeper(0.1), gpus=1)
        assert gc.api.wait(job2, timeout_s=15)["status"] == "succeeded"
    finally:
        if g2.poll() is None:  # whatever failed above, no other test runs beside a stray leader
            g2.kill()
            g2.wait()
    assert httpx.get(f"http://127.0.0.1:{gc.port}/health").json()["status"] == "ok"


def diffusion_pipe_job(gc: GpuCluster, epochs: int, **env: str) -> str:
    """Seed 000's request body, through the main API, with the stand-in `deepspeed` on PATH."""
    r = gc.api.client.post("/jobs", json={
        "trainer": "diffusion-pipe", "gpu_id": 1, "host": "b", "model_type": "flux",
        "description": "Flux LoRA", "env": {"PATH": f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}", **env},
        "dataset": {"resolutions": [512], "directories": [{"path": str(WORKSPACE), "num_repeats": 5}]},
        "config": {"epochs": epochs, "micro_batch_size_per_gpu": 1, "optimizer": {"type": "adamw_optimi", "lr": 5e-5}},
    })
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def test_diffusion_pipe_on_its_pinned_gpu_with_progress_metrics_and_checkpoints(gc: GpuCluster) -> None:
    job = diffusion_pipe_job(gc, 2)
    final = gc.api.wait(job, timeout_s=30)
    assert (final["status"], final["host"], final["gpu_ids"]) == ("succeeded", "b", [1])
    detail = gc.api.client.get(f"/jobs/{job}").json()
    out = Path(detail["run_dir"]).parent / "output"
    launch = json.loads((out / "standin-launch.json").read_text())
    assert launch["CUDA_VISIBLE_DEVICES"] == "1" and not any(a.startswith("--num_gpus") for a in launch["argv"])
    port = launch["argv"][0].split("=")[1]
    assert launch["argv"][-2:] == ["--master_port", port]
    assert launch["config"]["save_every_n_epochs"] == 1 and launch["config"]["adapter"]["type"] == "lora"
    assert launch["dataset"]["directory"] == [{"num_repeats": 5, "path": str(WORKSPACE)}]
    metrics = gc.api.client.get(f"/jobs/{job}/metrics", params={"name": "loss,eval/loss,lr"}).json()["series"]
    assert [p["step"] for p in metrics["loss"]] == list(range(1, 9))
    assert [(p["step"], p["value"]) for p in metrics["eval/loss"]] == [(4, 0.5), (8, 0.25)]
    assert len(metrics["lr"]) == 8
    progress = gc.api.client.get(f"/jobs/{job}/progress").json()
    assert (progress["step"], progress["total_steps"], progress["estimated"]) == (8, 8, True)
    assert sorted(Path(c["path"]).name for c in detail["checkpoints"]) == ["epoch1", "epoch2", "global_step8"]


def test_diffusion_pipe_stops_its_own_way_and_success_needs_its_completion_line(gc: GpuCluster) -> None:
    job = diffusion_pipe_job(gc, 50, STANDIN_STEP_S="0.1")
    gc.api.wait(job, {"running"})
    time.sleep(1.0)
    r = gc.api.client.post(f"/jobs/{job}/stop", json={"force": False, "grace_s": 20})
    assert r.status_code == 200
    stopped = gc.api.wait(job, timeout_s=15)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 0  # save_quit, not a signal
    texts = [ln["text"] for ln in gc.api.logs(job)]
    assert "Manually quitting" in texts and any("save_quit" in t for t in texts)
    detail = gc.api.client.get(f"/jobs/{job}").json()
    assert any(Path(c["path"]).name.startswith("global_step") for c in detail["checkpoints"])
    unfinished = diffusion_pipe_job(gc, 1, STANDIN_NO_COMPLETE="1")
    final = gc.api.wait(unfinished, timeout_s=30)
    assert final["status"] == "failed" and "TRAINING COMPLETE!" in final["reason"]


async def _publish_stop(gc: GpuCluster, host: str, job_id: str, attempt: int) -> None:
    stop = StopJob(job_id=job_id, attempt=attempt, ts_s=time.time(), force=True)
    await publish_commands(gc.nats_url, gc.stack.connect_options(), subjects.cmd(host, "stop"), stop)


def test_a_stop_for_an_attempt_that_ended_is_a_no_op_with_an_event(gc: GpuCluster) -> None:
    job = gc.submit(0.1, host="a")
    done = gc.api.wait(job)
    asyncio.run(_publish_stop(gc, "a", job, done["attempt"]))
    deadline = time.monotonic() + 10
    while True:
        notes = [e["data"] for e in gc.api.client.get(f"/jobs/{job}/events").json() if e["type"] == "agent_note"]
        if notes:
            break
        assert time.monotonic() < deadline, "no agent_note"
        time.sleep(0.1)
    assert notes[0]["what"] == "stop_ignored" and "already ended" in notes[0]["detail"]
    assert gc.api.status(job)["status"] == "succeeded"


def test_the_log_of_an_attempt_is_cut_at_the_cap_with_a_visible_event(gc: GpuCluster) -> None:
    agent = gc.stack.start_agent("capped", gc.tmp / "work-capped", gc.nats_url, gc.tmp / "agent-capped.log",
                                 "--heartbeat-interval-s", "0.3", "--max-log-bytes-per-attempt", "2000")
    try:
        gc.wait_online(len(AGENTS) + 1)
        script = "for i in range(500): print(f'line {i:04d} of a chatty trainer')\nprint('@trainyard {\"step\": 500}')"
        job = gc.api.submit([sys.executable, "-c", script], gpus=0, host="capped")
        assert gc.api.wait(job)["status"] == "succeeded"
        train = [ln["text"] for ln in gc.api.logs(job, type="train")]
        assert 0 < len(train) < 100 and train[0] == "line 0000 of a chatty trainer"
        system = [ln["text"] for ln in gc.api.logs(job, type="system")]
        assert any("log cut at 2,000 bytes" in t for t in system)
        notes = [e["data"] for e in gc.api.client.get(f"/jobs/{job}/events").json() if e["type"] == "agent_note"]
        assert [n["what"] for n in notes] == ["log_truncated"]
        assert gc.api.client.get(f"/jobs/{job}/progress").json()["step"] == 500  # reports still flow
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)


def _pending_tasks_of(log_file: Path) -> str:
    """A hung shutdown's log from the pending-task dump on (the thread dump after it shows only
    an idle loop), else the log's tail."""
    text = log_file.read_text()
    start = text.find("shutdown still running")
    return text[start:start + 30_000] if start >= 0 else text[-6000:]
