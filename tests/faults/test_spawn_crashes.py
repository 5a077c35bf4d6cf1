"""A start is never run twice, wherever in the spawn path the agent is killed (security review
H3). The agent kills itself with SIGKILL at a named step (TRAINYARD_TEST_CRASH_AT: the crash is
injected, not timed); the next agent finishes the start from what the dead one left. The trainer
counts its own starts in a file: exactly one, and every printed line stored exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from agent.options import CRASH_POINTS
from tests.harness import Rig, check_lines, job_processes, paced


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_an_agent_killed_at_each_step_of_a_start_starts_the_trainer_once(rig: Rig, tmp_path: Path, point: str) -> None:
    starts = tmp_path / "starts"
    rig.kill("agent-f", signal.SIGTERM)
    rig.start_agent("f", rig.agent_gpus["f"], env={"TRAINYARD_TEST_CRASH_AT": point})
    job = rig.api.submit(paced(300, 1.5), gpus=1, env={"PACED_STARTS_FILE": str(starts)})
    crashed = rig.procs["agent-f"]
    assert crashed.wait(30) == -signal.SIGKILL, f"the agent did not crash at {point}"
    rig.start_agent("f", rig.agent_gpus["f"])
    final = rig.api.wait(job, timeout_s=40)
    assert (final["status"], final["attempt"]) == ("succeeded", 1), final
    assert len(starts.read_text().splitlines()) == 1, f"started {starts.read_text().count(chr(10))} times"
    check = check_lines(rig.api, job, 300)
    assert check.exact, check
    deadline = time.monotonic() + 10
    while job_processes(job) or rig.busy_gpus():
        assert time.monotonic() < deadline, (job_processes(job), rig.busy_gpus())
        time.sleep(0.1)
