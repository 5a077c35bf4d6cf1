"""Quotas and fair share (gateway/scheduling/quotas.py), on plain data."""

from __future__ import annotations

import math

from gateway.projection.projector import JobNeeds
from gateway.scheduling.placement import HostView, QueuedJob, plan
from gateway.scheduling.quotas import Quota, fair_order, quota_limits, recent_gpu_hours
from shared.jobspec import CommandJob
from shared.jobstate import JobState, JobStatus

HOUR = 3600.0


def job(job_id: str, seq: int, user: str, gpus: int = 1, project: str | None = None, priority: int = 5) -> QueuedJob:
    return QueuedJob(job_id, 0, JobNeeds(priority=priority, submit_seq=seq, gpus=gpus, gpu_ids=(), host=None,
                                         min_gpu_memory_gb=None, spec=CommandJob(command=["x"], project=project),
                                         submitted_by=user))


def running(job_id: str, gpus: int, started: float = 0.0, finished: float | None = None) -> JobState:
    return JobState(job_id=job_id, status=JobStatus.SUCCEEDED if finished else JobStatus.RUNNING,
                    gpu_ids=tuple(range(gpus)), started_s=started, finished_s=finished)


def test_a_gpu_quota_counts_gang_jobs_whole_and_lets_smaller_ones_fit() -> None:
    held = job("r", 0, "alice", gpus=2)
    queue = [job("big", 1, "alice", gpus=4), job("small", 2, "alice", gpus=2), job("third", 3, "alice", gpus=1),
             job("bob", 4, "bob", gpus=8)]
    needs = {q.job_id: q.needs for q in [held, *queue]}
    ready, waiting = quota_limits(queue, {"r": running("r", 2)}, needs, {("user", "alice"): Quota(max_gpus=4)})
    assert [q.job_id for q in ready] == ["small", "bob"]  # 2 held + 2 = 4; bob has no quota
    assert waiting == {"big": "alice uses 2 of 4 GPUs (quota); this job needs 4",
                       "third": "alice uses 4 of 4 GPUs (quota); this job needs 1"}


def test_a_running_jobs_quota_and_a_project_quota_both_hold() -> None:
    queue = [job("a1", 1, "alice", project="vision"), job("b1", 2, "bob", project="vision"), job("a2", 3, "alice")]
    needs = {q.job_id: q.needs for q in queue}
    quotas = {("project", "vision"): Quota(max_running_jobs=1), ("user", "alice"): Quota(max_running_jobs=1)}
    ready, waiting = quota_limits(queue, {}, needs, quotas)
    assert [q.job_id for q in ready] == ["a1"]
    assert waiting == {"b1": "project vision runs 1 of at most 1 jobs (quota)",
                       "a2": "alice runs 1 of at most 1 jobs (quota)"}
    assert quota_limits(queue, {}, needs, {}) == (queue, {})  # none set: nothing held


def test_recent_gpu_hours_halve_with_each_half_life() -> None:
    needs = {j: job(j, 0, u).needs for j, u in (("a", "alice"), ("b", "bob"))}
    now = 10 * HOUR
    states = {"a": running("a", 4, started=now - HOUR, finished=now),  # 4 GPU-hours, just ended
              "b": running("b", 4, started=now - 3 * HOUR, finished=now - 2 * HOUR)}  # 4, ended 2 h ago
    usage = recent_gpu_hours(states, needs, now, half_life_s=2 * HOUR)
    expected_a = 4 * (1 - 0.5 ** 0.5) / math.log(2) * 2  # exp decay integrated over the hour
    assert math.isclose(usage[("user", "alice")], expected_a, rel_tol=1e-9)
    assert math.isclose(usage[("user", "bob")], expected_a / 2, rel_tol=1e-9)  # one half-life older


def test_fair_share_interleaves_a_flood_with_a_lighter_users_jobs_within_a_priority() -> None:
    flood = [job(f"a{i}", i, "alice") for i in range(5)]
    later = [job("b0", 10, "bob"), job("b1", 11, "bob"), job("urgent", 12, "carol", priority=9)]
    usage = {("user", "alice"): 10.0, ("user", "bob"): 50.0}
    order = [q.job_id for q in fair_order(flood + later, usage)]
    assert order == ["urgent", "a0", "b0", "a1", "b1", "a2", "a3", "a4"]  # priority first, then turns
    lighter = [q.job_id for q in fair_order([job("b0", 10, "bob"), job("a0", 1, "alice")], {("user", "alice"): 9.0})]
    assert lighter == ["b0", "a0"]  # same turn: the one with less recent use first, though submitted later
    placed, _ = plan(fair_order(flood + later, usage), {"h": HostView("h", {0: 1, 1: 1, 2: 1})})
    assert [a.job_id for a in placed] == ["urgent", "a0", "b0"]  # the planner keeps that order
