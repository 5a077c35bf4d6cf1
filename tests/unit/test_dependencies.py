"""The dependency rule (gateway/scheduling/dependencies.py), on plain data."""

from __future__ import annotations

from gateway.projection.projector import JobNeeds
from gateway.scheduling.dependencies import dependency_verdicts
from gateway.scheduling.placement import QueuedJob
from shared.jobspec import CommandJob
from shared.jobstate import JobState, JobStatus


def job(job_id: str, seq: int, *after: str, mode: str = "success") -> QueuedJob:
    spec = CommandJob(command=["x"], depends_on=list(after), depends_mode=mode)  # type: ignore[arg-type]
    return QueuedJob(job_id, 0, JobNeeds(priority=5, submit_seq=seq, gpus=1, gpu_ids=(), host=None,
                                         min_gpu_memory_gb=None, spec=spec))


def states(**status: str) -> dict[str, JobState]:
    return {j: JobState(job_id=j, status=JobStatus(s)) for j, s in status.items()}


def test_a_job_waits_until_every_job_it_names_has_succeeded() -> None:
    queue = [job("free", 1), job("b", 2, "a1", "a2"), job("c", 3, "a1")]
    ready, waiting, doomed = dependency_verdicts(queue, states(a1="succeeded", a2="running"))
    assert [q.job_id for q in ready] == ["free", "c"]  # order kept
    assert waiting == {"b": "waiting for a2 to succeed"} and doomed == {}


def test_a_dependency_that_ended_otherwise_dooms_the_job_unless_any_end() -> None:
    queue = [job("b", 1, "ok", "bad"), job("c", 2, "bad", mode="any_end"), job("d", 3, "gone"),
             job("e", 4, "lost", mode="any_end"), job("f", 5, "queued", mode="any_end")]
    ready, waiting, doomed = dependency_verdicts(queue, states(ok="succeeded", bad="failed", lost="lost",
                                                               queued="queued"))
    assert doomed == {"b": "it depends on bad, which ended failed", "d": "it depends on gone, which was deleted"}
    assert [q.job_id for q in ready] == ["c", "e"]
    assert waiting == {"f": "waiting for queued to end"}


def test_a_failed_dependency_being_retried_is_waited_for() -> None:
    # An automatic retry puts a failed job back in the queue: not terminal, so no verdict yet.
    ready, waiting, doomed = dependency_verdicts([job("b", 1, "a")], states(a="queued"))
    assert (ready, waiting, doomed) == ([], {"b": "waiting for a to succeed"}, {})
    ready, _, doomed = dependency_verdicts([job("b", 1, "a")], states(a="stopped"))
    assert ready == [] and doomed == {"b": "it depends on a, which ended stopped"}
