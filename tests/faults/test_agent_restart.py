"""An agent killed (kill -9 or SIGTERM) while its trainers run: they keep running, the next
agent re-adopts them and tails on from the saved offsets; each line is stored exactly once, the
job ends with its real exit status, nothing is left alive and no GPU stays held."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.nats import auth as natsauth
from tests.harness import TRAINERS, Rig, check_lines, job_processes, paced


def wait_lines(rig: Rig, job: str, at_least: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(rig.api.logs(job, tail=at_least)) < at_least:
        assert time.monotonic() < deadline, f"{job} never printed {at_least} lines"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_restarted_agent_readopts_a_running_trainer_without_losing_or_doubling_a_line(rig: Rig, sig: int) -> None:
    job = rig.api.submit(paced(1500, 3.0), gpus=1)
    rig.api.wait(job, {"running"})
    wait_lines(rig, job, 100)
    rig.restart("agent-f", sig, down_s=0.7)  # the trainer prints on while no agent watches
    final = rig.api.wait(job, timeout_s=30)
    assert final["status"] == "succeeded", final
    check = check_lines(rig.api, job, 1500)
    assert check.exact, check
    notes = [line["text"] for line in rig.api.logs(job, type="system")]
    assert sum("started pid" in text for text in notes) == 1 and final["attempt"] == 1  # never started twice
    assert any("agent restarted on host f" in text and "re-adopted" in text for text in notes), notes
    assert job_processes(job) == []
    assert rig.busy_gpus() == []


def test_a_trainer_that_ends_while_no_agent_runs_is_reported_with_its_real_exit_code(rig: Rig) -> None:
    job = rig.api.submit(paced(300, 1.0, exit_code=3), gpus=1)
    rig.api.wait(job, {"running"})
    wait_lines(rig, job, 20)
    rig.kill("agent-f")
    deadline = time.monotonic() + 20
    while job_processes(job):  # it ends meanwhile; its keeper records the exit status
        assert time.monotonic() < deadline, "the trainer never ended"
        time.sleep(0.05)
    rig.start_agent("f")
    final = rig.api.wait(job, timeout_s=30)
    assert (final["status"], final["exit_code"]) == ("failed", 3), final
    assert check_lines(rig.api, job, 300).exact


def test_stopping_a_readopted_trainer_works_and_kills_what_left_its_session(rig: Rig, tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    job = rig.api.submit([sys.executable, str(TRAINERS / "stubborn.py"), str(pid_file)], gpus=1)
    rig.api.wait(job, {"running"})
    deadline = time.monotonic() + 10
    while not pid_file.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rig.restart("agent-f", signal.SIGKILL)
    rig.wait_online(1)
    r = rig.api.client.post(f"/jobs/{job}/stop", json={"grace_s": 1})
    assert r.status_code in (200, 202), r.text
    final = rig.api.wait(job, timeout_s=30)
    assert final["status"] == "stopped", final
    assert job_processes(job) == []  # the setsid'd child that ignores SIGTERM too
    assert rig.busy_gpus() == []


DIES_OF_SIGTERM_SLOWLY = (
    "import os, signal, time\n"
    "def later(*_):\n"
    "    time.sleep(1.5)\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
    "    os.kill(os.getpid(), signal.SIGTERM)\n"
    "signal.signal(signal.SIGTERM, later)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_trainer_stopped_just_before_its_agent_died_is_reported_stopped(rig: Rig) -> None:
    """The stop's command is acknowledged, so it is never delivered again: the next agent learns
    from the attempt's state file that the SIGTERM its trainer died of was asked for."""
    job = rig.api.submit([sys.executable, "-c", DIES_OF_SIGTERM_SLOWLY], gpus=1)
    rig.api.wait(job, {"running"})
    wait_lines(rig, job, 2)
    r = rig.api.client.post(f"/jobs/{job}/stop", json={"grace_s": 30})
    assert r.status_code in (200, 202), r.text
    deadline = time.monotonic() + 10
    while not any("stop: SIGTERM" in ln["text"] for ln in rig.api.logs(job, type="system")):
        assert time.monotonic() < deadline, "the agent never signalled the trainer"
        time.sleep(0.05)
    rig.kill("agent-f")  # the trainer dies of the SIGTERM 1.5 s later, with no agent watching
    deadline = time.monotonic() + 20
    while job_processes(job):
        assert time.monotonic() < deadline, "the trainer never ended"
        time.sleep(0.05)
    rig.start_agent("f")
    final = rig.api.wait(job, timeout_s=30)
    assert (final["status"], final["signal"]) == ("stopped", signal.SIGTERM), final
    assert rig.busy_gpus() == []


def test_a_trainer_whose_keeper_died_with_no_agent_ends_lost_and_frees_its_gpu(rig: Rig) -> None:
    """A job is never left running with nobody running it (reliability H2): its keeper and
    trainer die while no agent watches, so no exit status is recorded; the next agent reports
    the attempt lost, which the projector takes from the host the job is on."""
    job = rig.api.submit(paced(3000, 30.0), gpus=1)
    rig.api.wait(job, {"running"})
    wait_lines(rig, job, 5)
    keeper = rig.api.client.get(f"/jobs/{job}").json()["pid"]  # it leads the trainer's process group
    rig.kill("agent-f")
    os.killpg(keeper, signal.SIGKILL)  # the keeper too: it can record no exit status
    deadline = time.monotonic() + 20
    while job_processes(job):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rig.start_agent("f")
    final = rig.api.wait(job, timeout_s=30)
    assert final["status"] == "lost" and "exit status is unknown" in final["reason"], (keeper, final)
    deadline = time.monotonic() + 20
    while rig.busy_gpus():
        assert time.monotonic() < deadline, rig.busy_gpus()
        time.sleep(0.1)


def test_a_second_agent_with_a_host_name_in_use_refuses(rig: Rig, tmp_path: Path) -> None:
    """One host name, one agent (user audit, rough edge 7): a second agent of host f, on another
    work dir (another machine, as far as it can tell) or on the same one, exits naming the
    first, and leaves its trainers alone."""
    job = rig.api.submit(paced(2000, 20.0), gpus=1)
    rig.api.wait(job, {"running"})
    for work_dir in (tmp_path / "elsewhere", rig.tmp / "work-f"):
        second = subprocess.run(
            [sys.executable, "-m", "trainyard", "agent", "--host", "f", "--work-dir", str(work_dir),
             "--nats-url", rig.nats_url, "--nats-credentials", str(rig.stack.credentials(natsauth.agent_user("f"))),
             "--simulate-gpus", "2x80GB",
             "--heartbeat-interval-s", "0.5"],
            capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "in use by another agent" in second.stderr, (work_dir, second.stderr[-800:])
    assert rig.api.status(job)["status"] == "running"
    wait_lines(rig, job, 20)
    rig.api.client.post(f"/jobs/{job}/stop", json={"force": True})
    assert rig.api.wait(job, timeout_s=20)["status"] == "stopped"
