"""Estimated starts: the queue walked forward in time, in the planner's order (placement.py),
to give each queued job an estimated wait where the running jobs' ETAs make one possible."""

from __future__ import annotations

from gateway.scheduling.placement import HostView, QueuedJob, queue_order


def estimate_starts(
    queue: list[QueuedJob],
    hosts: dict[str, HostView],
    busy_until: dict[tuple[str, int], float | None],
    expected_run_s: dict[str, float],
    now: float,
) -> dict[str, float]:
    """Estimated start time of each queued job, where one can be made.

    `busy_until[(host, gpu)]`: when a busy GPU frees (a running job's ETA), None if unknown.
    `expected_run_s[job_id]`: how long a queued job is expected to run (e.g. the median of its
    trainer's past runs). Jobs are walked in queue order; a job takes the earliest moment its
    GPUs are all known to be free. Anything that depends on an unknown stays unestimated.
    """
    free_at: dict[tuple[str, int], float | None] = {}
    for h, view in hosts.items():
        for g in view.gpu_memory_mb:
            free_at[(h, g)] = busy_until.get((h, g)) if g in view.busy else now
    starts: dict[str, float] = {}
    for q in sorted(queue, key=queue_order):
        needs = q.needs
        best: tuple[float, str, list[int]] | None = None
        for h, view in hosts.items():
            if needs.host and needs.host != h:
                continue
            gpus = list(needs.gpu_ids) if needs.gpu_ids else sorted(view.gpu_memory_mb)
            if needs.min_gpu_memory_gb:
                gpus = [g for g in gpus if view.gpu_memory_mb.get(g, 0) >= needs.min_gpu_memory_gb * 1024]
            times = sorted((at, g) for g in gpus if (at := free_at.get((h, g))) is not None)
            want = len(needs.gpu_ids) if needs.gpu_ids else needs.gpus
            if needs.gpu_ids and len(times) < len(needs.gpu_ids):
                continue
            if want == 0:
                times = [(now, -1)]
                want = 1
            if len(times) < want:
                continue
            start = times[want - 1][0]
            if best is None or start < best[0]:
                best = (start, h, [g for _, g in times[:want] if g >= 0])
        if best is None:
            continue
        start, h, gpus = best
        starts[q.job_id] = start
        run_s = expected_run_s.get(q.job_id)
        for g in gpus:
            free_at[(h, g)] = start + run_s if run_s is not None else None
    return starts
