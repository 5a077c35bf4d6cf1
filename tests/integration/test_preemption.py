"""Preemption on a real stack (issue 20): a high-priority job that cannot start stops a
preemptible lower-priority one the graceful way; the victim saves a checkpoint on SIGTERM, goes
back to the queue without using a retry, and resumes from that checkpoint after the
high-priority job has run, with no step done twice. One host with two simulated GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TRAINERS
from tests.harness import Api, Rig, started_rig

STEPS = 30


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with started_rig(tmp_path_factory.mktemp("preemption"), {"p": "2x80GB"}) as rig:
        yield rig


def checkpointing(ledger: Path, steps: int = STEPS, step_s: float = 0.1) -> list[str]:
    return [sys.executable, str(TRAINERS / "checkpointing.py"), str(ledger), str(steps), str(step_s)]


def test_a_preempted_job_checkpoints_resumes_and_does_no_step_twice(rig: Rig, tmp_path: Path) -> None:
    api: Api = rig.api
    ledger = tmp_path / "steps.txt"
    victim = api.submit(checkpointing(ledger), gpus=2, priority=1, preemptible=True, min_runtime_s=0,
                        preempt_grace_s=20, name="victim")
    api.wait(victim, statuses={"running"})
    api.wait_progress(victim)
    urgent = api.submit([sys.executable, "-c", "import time; time.sleep(0.5); print('urgent done')"], gpus=2,
                        priority=9, name="urgent")
    assert api.wait(urgent, timeout_s=60)["status"] == "succeeded"
    final = api.wait(victim, timeout_s=60)
    assert final["status"] == "succeeded", final
    steps = [int(line) for line in ledger.read_text().split()]
    assert steps == list(range(1, STEPS + 1)), steps  # each step once, in order, across two attempts

    detail = api.client.get(f"/jobs/{victim}").json()
    assert (detail["attempt"], detail["preemptions"]) == (2, 1), detail
    [saved] = detail["checkpoints"]
    # Reported relative to the attempt's run dir; the next attempt (another run dir) is given it whole.
    assert (saved["attempt"], saved["path"]) == (1, f"ckpt-{saved['step']}"), detail
    assert detail["resume_from"] == f"{detail['run_dir'].rsplit('/', 1)[0]}/1/{saved['path']}", detail
    assert 1 <= saved["step"] < STEPS
    events = [(e["status_event"], e["attempt"]) for e in detail["status_history"]]
    assert events[:5] == [("submitted", 0), ("scheduled", 1), ("started", 1), ("preempted", 1), ("exited", 1)], events
    assert ("scheduled", 2) in events and ("retried", 2) not in events
    logs = "\n".join(line["text"] for line in api.logs(victim))
    assert f"preempted by {urgent} (priority 9 over 1)" in logs, logs
    assert f"resuming from {detail['resume_from']} at step {saved['step']}" in logs, logs

    # The urgent job started only once the victim's first attempt had ended and freed the GPUs.
    history = {e["status_event"]: e["ts_s"] for e in detail["status_history"] if e["attempt"] == 1}
    urgent_detail = api.client.get(f"/jobs/{urgent}").json()
    urgent_scheduled = next(e["ts_s"] for e in urgent_detail["status_history"] if e["status_event"] == "scheduled")
    assert urgent_scheduled >= history["exited"], (urgent_scheduled, history)
    assert urgent_detail["gpu_ids"] == [0, 1] or sorted(urgent_detail["gpu_ids"]) == [0, 1]


def test_a_job_that_is_not_preemptible_or_too_young_is_left_running(rig: Rig, tmp_path: Path) -> None:
    api: Api = rig.api
    keep = api.submit(checkpointing(tmp_path / "keep.txt", steps=1000, step_s=0.05), gpus=2, priority=1,
                      preemptible=True, min_runtime_s=3600, name="young")
    api.wait(keep, statuses={"running"})
    urgent = api.submit([sys.executable, "-c", "print('urgent')"], gpus=2, priority=9)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert api.status(keep)["status"] == "running"
        assert api.status(urgent)["status"] == "queued"
        time.sleep(0.2)
    reason = api.status(urgent)["waiting_reason"]
    assert reason.startswith("needs 2 GPUs; largest free set is 0"), reason
    api.client.post(f"/jobs/{keep}/stop")
    assert api.wait(urgent, timeout_s=30)["status"] == "succeeded"
    assert api.client.get(f"/jobs/{keep}").json()["preemptions"] == 0


def test_preemption_fields_are_checked(rig: Rig) -> None:
    for field, value in (("preemptible", "yes"), ("max_preemptions", -1), ("min_runtime_s", -5),
                         ("preempt_grace_s", 99999)):
        r = rig.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], field: value})
        assert r.status_code in (400, 422) and field in r.text, (field, r.text)


def test_the_cli_submits_a_preemptible_job(rig: Rig) -> None:
    made = subprocess.run([sys.executable, "-m", "trainyard", "submit", "--url", rig.api.base, "--token", rig.token,
                           "--json", "--preemptible", "--min-runtime", "5", "--max-preemptions", "1",
                           "--preempt-grace", "9", "--", sys.executable, "-c", "print(1)"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    spec = rig.api.client.get(f"/jobs/{job}").json()["spec"]
    assert (spec["preemptible"], spec["min_runtime_s"], spec["max_preemptions"], spec["preempt_grace_s"]) == (
        True, 5.0, 1, 9.0), spec
