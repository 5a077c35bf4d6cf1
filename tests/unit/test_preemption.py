"""Preemption, pure: which running jobs a waiting job may stop (gateway/scheduling/preemption.py
through placement.plan_pass), and what a preempted attempt's end does to the job (jobstate)."""

from __future__ import annotations

import itertools
import random

import pytest

from gateway.projection.projector import JobNeeds
from gateway.scheduling.placement import HostView, QueuedJob, plan_pass
from gateway.scheduling.preemption import Claim, RunningJob
from shared import events as ev
from shared.jobspec import CommandJob
from shared.jobstate import JobState, JobStatus, evolve

SPEC = CommandJob(command=["x"])
NOW = 10_000.0


def job(job_id: str, gpus: int = 1, priority: int = 9, seq: int = 1, **kw) -> QueuedJob:
    needs = JobNeeds(priority=priority, submit_seq=seq, gpus=gpus, gpu_ids=tuple(kw.get("gpu_ids", ())),
                     host=kw.get("host"), min_gpu_memory_gb=kw.get("mem"), spec=SPEC)
    return QueuedJob(job_id, 0, needs)


def running(job_id: str, gpus: tuple[int, ...], priority: int = 1, started: float = NOW - 3600, **kw) -> RunningJob:
    return RunningJob(job_id=job_id, gpu_ids=gpus, priority=priority, started_s=started,
                      preemptible=kw.get("preemptible", True), preemptions=kw.get("preemptions", 0),
                      max_preemptions=kw.get("max_preemptions", 3), min_runtime_s=kw.get("min_runtime_s", 60.0))


def cluster(**layout: list[RunningJob] | int) -> dict[str, HostView]:
    """host=[running jobs] on 4 GPUs each (their GPUs busy), or host=N for N free GPUs."""
    views = {}
    for host, spec in layout.items():
        if isinstance(spec, int):
            views[host] = HostView(host, {i: 81920 for i in range(spec)})
            continue
        view = HostView(host, {i: 81920 for i in range(4)})
        for r in spec:
            view.busy |= set(r.gpu_ids)
            view.running += 1
            view.jobs.append(r)
        views[host] = view
    return views


Chosen = list[tuple[str, str, list[str]]]


def victims_of(queue: list[QueuedJob], views: dict[str, HostView], now: float = NOW) -> Chosen:
    decided = plan_pass(queue, views, now=now)
    return [(p.job_id, p.host, sorted(v.job_id for v in p.victims)) for p in decided.preemptions]


def test_the_fewest_victims_are_stopped() -> None:
    views = cluster(h1=[running("a", (0,)), running("b", (1,)), running("c", (2, 3))])
    assert victims_of([job("hi", gpus=2)], views) == [("hi", "h1", ["c"])]


def test_lowest_priority_then_most_recent_start() -> None:
    views = cluster(h1=[running("old", (0,), priority=2, started=NOW - 7200),
                        running("new", (1,), priority=2, started=NOW - 600),
                        running("mid", (2,), priority=3, started=NOW - 100),
                        running("low", (3,), priority=1, started=NOW - 9000)])
    assert victims_of([job("hi")], views) == [("hi", "h1", ["low"])]
    views = cluster(h1=[running("old", (0,), priority=2, started=NOW - 7200),
                        running("new", (1,), priority=2, started=NOW - 600)])
    assert victims_of([job("hi", gpus=3)], views) == [("hi", "h1", ["new"])]  # 2 free + the newest's
    views = cluster(h1=[running("old", (0, 1), priority=2, started=NOW - 7200),
                        running("new", (2, 3), priority=2, started=NOW - 600)])
    assert victims_of([job("hi", gpus=2)], views) == [("hi", "h1", ["new"])]


def test_free_gpus_count_so_fewer_jobs_are_stopped() -> None:
    views = cluster(h1=[running("a", (0,)), running("b", (1,))], h2=[running("c", (0,)), running("d", (1,)),
                                                                   running("e", (2,))])
    # h1 has 2 free: one victim frees the third GPU; h2 would need two.
    assert victims_of([job("hi", gpus=3)], views) == [("hi", "h1", ["a"])]


def test_no_preemption_that_would_not_free_enough() -> None:
    views = cluster(h1=[running("p", (0, 1)), running("keep", (2, 3), preemptible=False)])
    assert victims_of([job("hi", gpus=4)], views) == []
    decided = plan_pass([job("hi", gpus=4)], views, now=NOW)
    assert decided.assignments == [] and "largest free set" in decided.waiting["hi"]


def test_never_across_hosts() -> None:
    views = cluster(h1=[running("a", (0, 1)), running("x", (2, 3), preemptible=False)],
                    h2=[running("b", (0, 1)), running("y", (2, 3), preemptible=False)])
    assert victims_of([job("hi", gpus=4)], views) == []


@pytest.mark.parametrize(("rule", "victim"), [
    ("not preemptible", running("v", (0, 1, 2, 3), preemptible=False)),
    ("same priority", running("v", (0, 1, 2, 3), priority=9)),
    ("higher priority", running("v", (0, 1, 2, 3), priority=10)),
    ("preempted enough", running("v", (0, 1, 2, 3), preemptions=3, max_preemptions=3)),
    ("too young", running("v", (0, 1, 2, 3), started=NOW - 30, min_runtime_s=60)),
])
def test_who_is_never_preempted(rule: str, victim: RunningJob) -> None:
    assert victims_of([job("hi")], cluster(h1=[victim])) == [], rule


def test_a_job_that_fits_now_is_placed_not_preempting() -> None:
    views = cluster(h1=[running("a", (0, 1))])
    decided = plan_pass([job("hi", gpus=2)], views, now=NOW)
    assert decided.preemptions == [] and [a.job_id for a in decided.assignments] == ["hi"]


def test_without_now_nothing_is_preempted() -> None:
    views = cluster(h1=[running("a", (0, 1, 2, 3))])
    assert plan_pass([job("hi")], views).preemptions == []


def test_pinned_gpus_and_memory_floors_choose_the_victims_holding_them() -> None:
    views = cluster(h1=[running("a", (0,)), running("b", (1,), priority=0), running("c", (2, 3))])
    assert victims_of([job("hi", gpu_ids=(0,))], views) == [("hi", "h1", ["a"])]
    views = cluster(h1=[running("small", (0,), priority=0), running("big", (1,))])
    views["h1"].gpu_memory_mb = {0: 24576, 1: 81920, 2: 24576, 3: 24576}
    views["h1"].busy |= {2, 3}  # used by something trainyard did not start
    assert victims_of([job("hi", mem=40)], views) == [("hi", "h1", ["big"])]


def test_two_waiting_jobs_do_not_share_victims() -> None:
    views = cluster(h1=[running("a", (0, 1)), running("b", (2, 3))])
    result = victims_of([job("x", gpus=2, seq=1), job("y", gpus=2, seq=2)], views)
    assert sorted(v for _, _, vs in result for v in vs) == ["a", "b"]
    assert len(result) == 2


def test_a_lower_job_does_not_preempt_on_the_host_held_for_the_head() -> None:
    # The head needs 4 GPUs, finds no victims it may stop (same priority), and holds h1; a lower
    # job must not preempt there, taking GPUs the head waits for.
    views = cluster(h1=[running("a", (0, 1), priority=1), running("b", (2, 3), priority=9)])
    queue = [job("head", gpus=4, priority=9, seq=1), job("lower", gpus=2, priority=8, seq=2)]
    assert victims_of(queue, views) == []


def test_claimed_gpus_wait_for_their_job_and_go_to_it_once_free() -> None:
    claim = Claim("h1", (0, 1), ("a",), NOW + 60)
    views = cluster(h1=[running("a", (0, 1))])
    views["h1"].jobs = []  # a is stopping now: no longer a candidate
    decided = plan_pass([job("hi", gpus=2), job("other", gpus=2, priority=1, seq=2)], views, now=NOW,
                        claims={"hi": claim})
    assert "waiting for a (preempted for it)" in decided.waiting["hi"]
    assert [a.job_id for a in decided.assignments] == ["other"]  # on GPUs 2,3, not the claimed ones
    assert decided.assignments[0].gpu_ids == (2, 3)
    views = cluster(h1=4)
    views["h1"].busy = {1}  # one GPU still shows a process (the victim's, not yet gone)
    decided = plan_pass([job("hi", gpus=2), job("other", gpus=2, priority=1, seq=2)], views, now=NOW,
                        claims={"hi": claim})
    assert [a.job_id for a in decided.assignments] == ["other"] and decided.assignments[0].gpu_ids == (2, 3)
    decided = plan_pass([job("hi", gpus=2)], cluster(h1=4), now=NOW, claims={"hi": claim})
    assert [(a.job_id, a.gpu_ids) for a in decided.assignments] == [("hi", (0, 1))]


def test_random_clusters_preempt_exactly_what_a_brute_force_search_finds() -> None:
    """Adversarial: on random hosts, a preemption happens exactly when some set of eligible jobs
    on one host would free enough GPUs; it stops as few jobs as the brute force's best, only
    eligible ones, and none that could be spared; the job's GPUs are free or freed ones."""
    rng = random.Random(7)
    preempted = 0
    for _ in range(400):
        layout: dict[str, list[RunningJob] | int] = {}
        for h in range(rng.randint(1, 4)):
            jobs, gpu = [], 0
            while gpu < 4 and rng.random() < 0.85:
                width = rng.randint(1, 4 - gpu)
                jobs.append(running(f"h{h}j{gpu}", tuple(range(gpu, gpu + width)), priority=rng.randint(0, 9),
                                    started=NOW - rng.choice([10, 600, 5000]), preemptible=rng.random() < 0.7,
                                    preemptions=rng.choice([0, 0, 3])))
                gpu += width
            layout[f"h{h}"] = jobs
        views = cluster(**layout)
        want, priority = rng.randint(1, 4), rng.randint(1, 9)
        free = {h: set(v.gpu_memory_mb) - v.busy for h, v in views.items()}
        eligible = {h: [r for r in v.jobs if r.preemptible and r.priority < priority and r.preemptions < 3
                        and r.started_s <= NOW - 60] for h, v in views.items()}
        fewest = min((n for h in views for n in range(1, len(eligible[h]) + 1)
                      for combo in itertools.combinations(eligible[h], n)
                      if len(free[h]) + sum(len(r.gpu_ids) for r in combo) >= want), default=None)
        decided = plan_pass([job("hi", gpus=want, priority=priority)], views, now=NOW)
        if any(len(f) >= want for f in free.values()):
            assert decided.preemptions == [] and len(decided.assignments) == 1
            continue
        if fewest is None:
            assert decided.preemptions == [] and decided.assignments == []
            continue
        assert len(decided.preemptions) == 1
        p = decided.preemptions[0]
        preempted += 1
        assert len(p.victims) == fewest
        assert all(v in eligible[p.host] for v in p.victims)
        freed = {g for v in p.victims for g in v.gpu_ids}
        assert len(p.gpu_ids) == want and set(p.gpu_ids) <= free[p.host] | freed
        for spare in p.victims:
            rest = {g for v in p.victims if v is not spare for g in v.gpu_ids}
            assert len(free[p.host] | rest) < want, "a victim was stopped for nothing"
    assert preempted > 50  # the cases above were not all trivial


# ---- the state machine ---------------------------------------------------------------------------


def _running() -> JobState:
    return JobState(job_id="job_v", status=JobStatus.RUNNING, attempt=1, host="h", gpu_ids=(0,),
                    started_s=1.0, failures=0, max_retries=0)


def test_a_preempted_attempt_goes_back_to_the_queue_without_using_a_retry() -> None:
    state = evolve(_running(), ev.JobPreempted(job_id="job_v", attempt=1, ts_s=2.0, by="job_hi", host="h",
                                               grace_s=30.0, reason="preempted by job_hi"))
    assert state.status is JobStatus.STOPPING and state.preempted_by == "job_hi" and state.stop_grace_s == 30.0
    ended = evolve(state, ev.JobExited(job_id="job_v", attempt=1, ts_s=3.0, outcome="stopped", signal=15,
                                       checkpoint="/runs/job_v/ckpt-7"))
    assert ended.status is JobStatus.QUEUED
    assert (ended.failures, ended.preemptions, ended.preempted_by, ended.retry_after_s) == (0, 1, None, None)
    assert ended.resume_from == "/runs/job_v/ckpt-7" and ended.host is None and ended.gpu_ids == ()
    assert ended.reason.startswith("preempted by job_hi (preemption 1)")
    # No checkpoint this time: the previous one still holds.
    again = ended
    for event in (ev.JobScheduled(job_id="job_v", attempt=2, ts_s=4.0, host="h"),
                  ev.JobStarted(job_id="job_v", attempt=2, ts_s=4.5, host="h", pid=2, run_dir="/r", stdout_path="/o",
                                stderr_path="/e"),
                  ev.JobPreempted(job_id="job_v", attempt=2, ts_s=5.0, by="job_x"),
                  ev.JobExited(job_id="job_v", attempt=2, ts_s=6.0, outcome="failed", exit_code=1)):
        again = evolve(again, event)
    assert (again.status, again.preemptions, again.resume_from) == (JobStatus.QUEUED, 2, "/runs/job_v/ckpt-7")


def test_a_preempted_attempt_that_finishes_or_is_stopped_by_its_user_ends() -> None:
    preempted = evolve(_running(), ev.JobPreempted(job_id="job_v", attempt=1, ts_s=2.0, by="job_hi"))
    done = evolve(preempted, ev.JobExited(job_id="job_v", attempt=1, ts_s=3.0, outcome="succeeded", exit_code=0))
    assert done.status is JobStatus.SUCCEEDED and done.preempted_by is None
    stopped = evolve(evolve(preempted, ev.JobStopRequested(job_id="job_v", attempt=1, ts_s=2.5)),
                     ev.JobExited(job_id="job_v", attempt=1, ts_s=3.0, outcome="stopped", signal=15))
    assert stopped.status is JobStatus.STOPPED and stopped.preemptions == 0
