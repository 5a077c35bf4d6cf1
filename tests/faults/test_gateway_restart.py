"""The gateway (projector and scheduler) killed with kill -9 while a trainer prints and jobs
wait: nothing applied twice, nothing skipped, queued jobs still queued in the same order, and
scheduling goes on once it is back."""

from __future__ import annotations

from tests.faults.test_agent_restart import wait_lines
from tests.harness import Rig, check_lines, paced


def queue_order(rig: Rig) -> list[str]:
    return [entry["job_id"] for entry in rig.api.client.get("/queue").json()["jobs"]]


def test_a_gateway_killed_mid_batch_loses_nothing_and_keeps_the_queue(rig: Rig) -> None:
    running = rig.api.submit(paced(3000, 3.0), gpus=1)
    rig.api.wait(running, {"running"})
    assert rig.api.client.post("/queue/processor/stop").json()["status"] == "stopped"
    waiting = [rig.api.submit(paced(20, 0.2), gpus=1, priority=p) for p in (1, 5, 3)]
    before = queue_order(rig)
    assert set(before) == set(waiting) and before[0] == waiting[1]  # priority 5 first
    wait_lines(rig, running, 200)
    for _ in range(2):
        rig.restart("gateway")  # kill -9 while log batches are being applied
        rig.wait_healthy()
    assert queue_order(rig) == before
    assert all(rig.api.status(job)["status"] == "queued" for job in waiting)
    # Followed from the start across the restarts, while it still prints: the same lines as stored.
    followed, how = rig.api.follow(running)
    assert how == "succeeded"
    rig.api.client.post("/queue/processor/start")
    assert rig.api.wait(running, timeout_s=30)["status"] == "succeeded"
    check = check_lines(rig.api, running, 3000)
    assert check.exact, check
    assert [(ln["seq"], ln["text"]) for ln in followed] == [(ln["seq"], ln["text"]) for ln in rig.api.logs(running)]
    for job in waiting:
        assert rig.api.wait(job, timeout_s=30)["status"] == "succeeded"
        assert check_lines(rig.api, job, 20).exact
    rig.restart("gateway")
    rig.wait_healthy()
    assert rig.api.follow(running) == (followed, "succeeded"), "an ended job's log, followed after a restart"
