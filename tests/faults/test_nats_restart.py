"""nats-server restarted while a trainer prints: the agent and the gateway reconnect by
themselves, what the trainer printed meanwhile waits (in the output files on disk) and is
published after, once; the job ends as it should."""

from __future__ import annotations

import signal

import pytest

from tests.faults.test_agent_restart import wait_lines
from tests.harness import Rig, check_lines, job_processes, paced


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_nats_restart_mid_run_loses_no_line_and_everything_reconnects(rig: Rig, sig: int) -> None:
    job = rig.api.submit(paced(1500, 3.0), gpus=1)
    rig.api.wait(job, {"running"})
    wait_lines(rig, job, 100)
    rig.restart("nats", sig, down_s=1.5)
    final = rig.api.wait(job, timeout_s=60)
    assert final["status"] == "succeeded", final
    check = check_lines(rig.api, job, 1500)
    assert check.exact, check
    assert job_processes(job) == []
    # Commands flow again too: a new job is placed, run and reported.
    after = rig.api.submit(paced(10, 0.1), gpus=1)
    assert rig.api.wait(after, timeout_s=30)["status"] == "succeeded"
    assert check_lines(rig.api, after, 10).exact
