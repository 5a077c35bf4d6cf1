"""Quotas and fair share (issue 20): how much of the pool one user or project may hold, and
whose job goes next within a priority. Pure, over plain data.

- A quota (`PUT /quotas/{user|project}/{name}`) caps the GPUs and the running jobs of a user (a
  token's name) or a project (a job's `project`); a job that would go over waits, "alice uses 4
  of 4 GPUs". Jobs on hosts count, and so do queued ones ahead of it in this pass.
- Fair share, like Slurm's fair-share factor: within one priority the queue is ordered by the
  user's (then project's) recent GPU-hours, each past hour weighing half as much per half-life
  (`fair_share_half_life_s`), then by submit order. One person's 50 queued jobs then take turns
  with everyone else's instead of going first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.scheduling.placement import JobNeeds, QueuedJob, queue_order
from shared.jobstate import ON_HOST, JobState

Owner = tuple[str, str]  # ("user", name) or ("project", name)


@dataclass(frozen=True)
class Quota:
    max_gpus: int | None = None
    max_running_jobs: int | None = None


def owners(needs: JobNeeds) -> list[Owner]:
    found: list[Owner] = [("user", needs.submitted_by)]
    if needs.spec.project:
        found.append(("project", needs.spec.project))
    return found


def quota_limits(queue: list[QueuedJob], states: Mapping[str, JobState], needs: Mapping[str, JobNeeds],
                 quotas: Mapping[Owner, Quota]) -> tuple[list[QueuedJob], dict[str, str]]:
    """The queued jobs their owners' quotas let start now (in order), and why the others wait."""
    if not quotas:
        return queue, {}
    gpus: dict[Owner, int] = {}
    jobs: dict[Owner, int] = {}
    for job_id, state in states.items():
        if state.status in ON_HOST and (n := needs.get(job_id)) is not None:
            for owner in owners(n):
                if owner in quotas:
                    gpus[owner] = gpus.get(owner, 0) + len(state.gpu_ids)
                    jobs[owner] = jobs.get(owner, 0) + 1
    ready: list[QueuedJob] = []
    waiting: dict[str, str] = {}
    for q in queue:
        mine = [o for o in owners(q.needs) if o in quotas]
        why = next((w for o in mine if (w := _over(o, quotas[o], gpus.get(o, 0), jobs.get(o, 0), q.needs.gpus))),
                   None)
        if why:
            waiting[q.job_id] = why
            continue
        for o in mine:  # it holds its share from here on in this pass
            gpus[o] = gpus.get(o, 0) + q.needs.gpus
            jobs[o] = jobs.get(o, 0) + 1
        ready.append(q)
    return ready, waiting


def _over(owner: Owner, quota: Quota, gpus: int, jobs: int, asks: int) -> str | None:
    kind, name = owner
    who = name if kind == "user" else f"project {name}"
    if quota.max_gpus is not None and gpus + asks > quota.max_gpus:
        return f"{who} uses {gpus} of {quota.max_gpus} GPUs (quota); this job needs {asks}"
    if quota.max_running_jobs is not None and jobs + 1 > quota.max_running_jobs:
        return f"{who} runs {jobs} of at most {quota.max_running_jobs} jobs (quota)"
    return None


def recent_gpu_hours(states: Mapping[str, JobState], needs: Mapping[str, JobNeeds], now: float,
                     half_life_s: float) -> dict[Owner, float]:
    """Each user's and project's GPU-hours, an hour that ended `age` ago weighing
    0.5 ** (age / half_life). (Integrated exactly over each run: a long run weighs less at its
    start than at its end.)"""
    usage: dict[Owner, float] = {}
    rate = math.log(2) / half_life_s
    for job_id, state in states.items():
        if state.started_s is None or not state.gpu_ids or (n := needs.get(job_id)) is None:
            continue
        end = min(state.finished_s or now, now)
        start = min(state.started_s, end)
        # integral of exp(-rate * (now - t)) dt from start to end, in hours
        weighted = (math.exp(-rate * (now - end)) - math.exp(-rate * (now - start))) / rate / 3600
        for owner in owners(n):
            usage[owner] = usage.get(owner, 0.0) + weighted * len(state.gpu_ids)
    return usage


def fair_order(queue: list[QueuedJob], usage: Mapping[Owner, float]) -> list[QueuedJob]:
    """The queue with each job's fair-share place set (QueuedJob.fair), in queue order: within
    a priority, a user's first queued job comes before anyone's second (turns), and within a
    turn the user (then the project) with the least recent GPU-hours goes first."""
    turns: dict[tuple[int, str], int] = {}
    ranked = []
    for q in sorted(queue, key=queue_order):
        user, *project = owners(q.needs)
        turn = turns.get((q.needs.priority, user[1]), 0)
        turns[(q.needs.priority, user[1])] = turn + 1
        fair = (float(turn), usage.get(user, 0.0), usage.get(project[0], 0.0) if project else 0.0)
        ranked.append(dataclasses.replace(q, fair=fair))
    return sorted(ranked, key=queue_order)
