"""GPU release is verified, and commands are idempotent: a job's GPUs are free again only when
none of its processes is alive (simulated GPUs: found by the job id in their environment, also
those that left the trainer's session); a start delivered twice runs one trainer."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

from shared import subjects
from shared.commands import StartJob
from shared.jobspec import CommandJob
from tests.harness import TRAINERS, Rig, job_processes, pid_alive, publish_commands


def test_a_worker_that_left_the_session_dies_with_the_job_before_its_gpu_is_free(rig: Rig, tmp_path: Path) -> None:
    pid_file = tmp_path / "worker"
    job = rig.api.submit([sys.executable, str(TRAINERS / "escaper.py"), str(pid_file)], gpus=1)
    final = rig.api.wait(job, timeout_s=30)
    assert final["status"] == "succeeded", final
    worker = int(pid_file.read_text())
    assert not pid_alive(worker) and job_processes(job) == []
    assert rig.busy_gpus() == []
    system = [line["text"] for line in rig.api.logs(job, type="system")]
    assert any(f"left the trainer's session: pids {worker}" in text for text in system), system


def test_a_start_delivered_twice_runs_one_trainer(rig: Rig) -> None:
    job_id = f"job_twice_{int(time.time())}"
    # A trainer that prints at once and ends: the gateway, which knows no such job, has the
    # agent stop it (fencing, tested elsewhere), and a slower one might not have printed yet.
    command = StartJob(job_id=job_id, attempt=1, ts_s=time.time(), gpu_ids=[1],
                       spec=CommandJob(command=[shutil.which("echo") or "/bin/echo", "out 0"], gpus=1))
    # twice: e.g. a redelivery after a lost ack, or a retried publish past the dedupe window
    asyncio.run(publish_commands(rig.nats_url, rig.stack.connect_options(), subjects.cmd("f", "start"),
                                 command, command))
    agent_log = rig.tmp / "agent-f.log"
    deadline = time.monotonic() + 10
    while f"start {job_id}/1 already handled; ignored" not in agent_log.read_text():
        assert time.monotonic() < deadline, "the duplicate start was never read"
        time.sleep(0.05)
    stdout = rig.tmp / "work-f" / "runs" / job_id / "1" / "stdout.log"
    deadline = time.monotonic() + 10
    while not stdout.exists() or "out 0" not in stdout.read_text():  # (the keeper creates the file)
        assert time.monotonic() < deadline, "the trainer never printed"
        time.sleep(0.05)
    time.sleep(0.5)  # a second trainer, if one had been started, would have printed by now
    assert stdout.read_text().splitlines() == ["out 0"]  # one trainer wrote it
    deadline = time.monotonic() + 15
    while job_processes(job_id):
        assert time.monotonic() < deadline
        time.sleep(0.1)
