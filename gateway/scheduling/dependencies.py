"""Dependencies between jobs (`depends_on`, like Slurm's `--dependency=afterok`): which queued
jobs may be placed, which wait and why, and which can never run. Pure, over plain data.

With `depends_mode: "success"` (the default) a job waits until every job it names has
succeeded; once one of them has ended otherwise (failed, stopped, lost) or was deleted, it can
never run, and the scheduler ends it `stopped` with that reason (a `cancelled` event, as a
dequeued job ends). With `"any_end"` it waits until each has ended, whatever the outcome
(`afterany`). A job only names jobs that exist when it is submitted, so no cycle can form.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.scheduling.placement import QueuedJob
from shared.jobstate import JobState, JobStatus


def dependency_verdicts(
    queue: list[QueuedJob], states: Mapping[str, JobState]
) -> tuple[list[QueuedJob], dict[str, str], dict[str, str]]:
    """(the jobs free to be placed, in order; job -> why it waits; job -> why it never can)."""
    ready: list[QueuedJob] = []
    waiting: dict[str, str] = {}
    doomed: dict[str, str] = {}
    for q in queue:
        spec = q.needs.spec
        if not spec.depends_on:
            ready.append(q)
            continue
        any_end = spec.depends_mode == "any_end"
        open_: list[str] = []
        for dep in spec.depends_on:
            state = states.get(dep)
            if state is None:
                doomed[q.job_id] = f"it depends on {dep}, which was deleted"
                break
            if state.status is JobStatus.SUCCEEDED or (any_end and state.is_terminal):
                continue
            if state.is_terminal:
                doomed[q.job_id] = f"it depends on {dep}, which ended {state.status.value}"
                break
            open_.append(dep)
        if q.job_id in doomed:
            continue
        if open_:
            word = "end" if any_end else "succeed"
            waiting[q.job_id] = f"waiting for {', '.join(open_)} to {word}"
        else:
            ready.append(q)
    return ready, waiting, doomed
