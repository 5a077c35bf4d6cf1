from __future__ import annotations

from gateway.projector import JobNeeds
from gateway.placement import HostView, QueuedJob, plan
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
