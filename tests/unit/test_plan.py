from __future__ import annotations

from gateway.projection.projector import JobNeeds
from gateway.scheduling.estimates import estimate_starts
from gateway.scheduling.placement import HostView, QueuedJob, plan
from shared.jobspec import CommandJob

SPEC = CommandJob(command=["x"])


def job(job_id: str, seq: int, gpus: int = 1, priority: int = 5, **kw) -> QueuedJob:
    needs = JobNeeds(priority=priority, submit_seq=seq, gpus=gpus, gpu_ids=tuple(kw.get("gpu_ids", ())),
                     host=kw.get("host"), min_gpu_memory_gb=kw.get("mem"), spec=SPEC)
    return QueuedJob(job_id, 0, needs)


def hosts(**spec: int) -> dict[str, HostView]:
    return {h: HostView(h, {i: 81920 for i in range(n)}) for h, n in spec.items()}


def test_priority_then_fifo() -> None:
    q = [job("a", 1), job("b", 2, priority=9), job("c", 3)]
    assigned, _ = plan(q, hosts(h1=2))
    assert [a.job_id for a in assigned] == ["b", "a"]


def test_gang_on_one_host_and_reason_when_waiting() -> None:
    assigned, waiting = plan([job("big", 1, gpus=3)], hosts(h1=2, h2=2))
    assert assigned == []
    assert waiting["big"] == "needs 3 GPUs; no online host has that many GPUs"
    views = hosts(h1=4, h2=2)
    views["h1"].busy = {0, 1}
    assigned, waiting = plan([job("big", 1, gpus=3)], views)
    assert waiting["big"] == "needs 3 GPUs; largest free set is 2 on host h1"


def test_head_job_reserves_and_small_jobs_do_not_starve_it() -> None:
    views = hosts(h1=4)
    views["h1"].busy = {0, 1}
    q = [job("big", 1, gpus=4), job("small", 2, gpus=1)]
    assigned, waiting = plan(q, views)
    assert assigned == [] and set(waiting) == {"big", "small"}
    # The small job's reason says why the two free GPUs are not its (user audit 16).
    assert waiting["small"] == ("needs 1 GPU; largest free set is 0 on host h1; "
                                "2 more free GPUs are held for a job ahead of it")


def test_a_gpu_that_does_not_exist_is_no_such_gpu_not_busy() -> None:
    _, waiting = plan([job("seven", 1, gpu_ids=(7,))], hosts(h1=2))
    assert waiting["seven"].startswith("no such GPU") and "busy" not in waiting["seven"]


def test_backfill_on_gpus_the_head_cannot_use() -> None:
    views = hosts(h1=4, h2=1)
    views["h1"].busy = {0, 1}
    q = [job("big", 1, gpus=4), job("small", 2, gpus=1)]
    assigned, _ = plan(q, views)
    assert [(a.job_id, a.host) for a in assigned] == [("small", "h2")]


def test_pinned_gpus_and_cpu_jobs() -> None:
    views = hosts(h1=2)
    assigned, _ = plan([job("pin", 1, gpu_ids=(1,)), job("cpu", 2, gpus=0)], views)
    assert {(a.job_id, a.gpu_ids) for a in assigned} == {("pin", (1,)), ("cpu", ())}


def test_a_pinned_head_job_holds_back_only_its_own_gpus() -> None:
    views = hosts(h1=4)
    views["h1"].busy = {1}
    q = [job("pinned", 1, gpu_ids=(1,)), job("small", 2)]
    assigned, waiting = plan(q, views)
    assert "pinned" in waiting and [(a.job_id, a.gpu_ids) for a in assigned] == [("small", (0,))]


def test_a_refused_job_goes_elsewhere_or_waits() -> None:
    views = hosts(h1=1, h2=1)
    refused = QueuedJob("r", 1, job("r", 1).needs, avoid_host="h1")
    assigned, _ = plan([refused], views)
    assert [a.host for a in assigned] == ["h2"]
    views = hosts(h1=1)
    assigned, waiting = plan([QueuedJob("r", 1, job("r", 1).needs, avoid_host="h1")], views)
    assert assigned == [] and "refused it a moment ago" in waiting["r"]


def test_memory_floor_and_reasons() -> None:
    views = {"small": HostView("small", {0: 40960}), "big": HostView("big", {0: 81920})}
    assigned, _ = plan([job("m", 1, mem=60)], views)
    assert [a.host for a in assigned] == ["big"]
    _, waiting = plan([job("m", 1, mem=100)], {"small": HostView("small", {0: 40960})})
    assert waiting["m"] == "needs 1 GPU with >= 100 GB; no online GPU has that much memory (largest 40 GB)"
    _, waiting = plan([job("x", 1, host="nowhere")], hosts(h1=1))
    assert waiting["x"] == "host nowhere is not online"


def test_estimated_starts_follow_running_etas_and_past_run_times() -> None:
    views = hosts(h1=2)
    views["h1"].busy = {0, 1}
    busy_until = {("h1", 0): 100.0, ("h1", 1): 160.0}
    q = [job("one", 1), job("two", 2), job("three", 3)]
    starts = estimate_starts(q, views, busy_until, {"one": 30.0}, now=50.0)
    # one takes GPU 0 at 100 and runs 30 s; two takes GPU 0 when one ends, at 130 (its own run
    # time is unknown, so GPU 0 is unknown after it); three waits for GPU 1, free at 160.
    assert starts == {"one": 100.0, "two": 130.0, "three": 160.0}
    unknown = estimate_starts(q[:1], views, {("h1", 0): None, ("h1", 1): None}, {}, now=50.0)
    assert unknown == {}


def test_the_memory_floor_index_picks_what_a_look_at_every_host_picks() -> None:
    """FloorIndex (a pass's shortcut for jobs with a memory floor) against best_any's scan of
    every host, over random hosts as jobs are placed on them one by one."""
    import random

    from gateway.scheduling.placement import _Pool

    rng = random.Random(5)
    for _ in range(200):
        views = {}
        for h in range(rng.randint(1, 12)):
            memory = {i: rng.choice([24576, 40960, 81920]) for i in range(rng.choice([2, 4, 8]))}
            views[f"h{h:02d}"] = HostView(f"h{h:02d}", memory, busy=set(rng.sample(sorted(memory), rng.randint(0, 2))),
                                          running=rng.randint(0, 3))
        pool = _Pool(views)
        for _ in range(10):
            needs = job("x", 1, gpus=rng.randint(1, 4), mem=rng.choice([20, 30, 60])).needs
            scanned, indexed = pool.best_any(needs), pool.best_with_floor(needs)
            assert scanned == indexed, (needs, scanned, indexed)
            if scanned is None:
                continue
            pool.take(*scanned)
