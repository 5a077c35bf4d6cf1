"""Preemption: which running jobs a waiting higher-priority job may stop to start. Pure.

A queued job that cannot be placed may take GPUs from running jobs that are `preemptible`, of
lower priority, preempted fewer than their `max_preemptions` times and running for at least their
`min_runtime_s` (no thrashing). It takes them on one host (a job's GPUs are on one host), and only
where evicting them frees enough GPUs that suit it: a preemption that would not let the job start
never happens. Of the choices that would, the scheduler takes the fewest victims, then the
lowest priorities, then the most recently started (the least work lost), like Kueue and Slurm's
`PreemptMode=REQUEUE`.

The victims are stopped gracefully and go back to the queue (jobstate: a `preempted` event); the
GPUs they free are claimed for the job that preempted them (`Claim`), which starts only once the
scheduler's view shows those GPUs free: the victims' attempts ended and no process is left on
them (placement.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass

# A host with more candidate victims than this is searched over its best ones only (by priority,
# then latest start): the subsets of 10 are 1,023, which keeps a pass inside DESIGN §9's budget.
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class RunningJob:
    """A running job as preemption sees it."""

    job_id: str
    gpu_ids: tuple[int, ...]
    priority: int
    started_s: float
    preemptible: bool = False
    preemptions: int = 0
    max_preemptions: int = 3
    min_runtime_s: float = 60.0

    def may_be_preempted(self, now: float) -> bool:
        """By a job of higher priority, that is."""
        return (self.preemptible and bool(self.gpu_ids) and self.preemptions < self.max_preemptions
                and now - self.started_s >= self.min_runtime_s)

    def may_be_preempted_by(self, priority: int, now: float) -> bool:
        return self.priority < priority and self.may_be_preempted(now)


def candidates(running: dict[str, list[RunningJob]], now: float) -> dict[str, list[RunningJob]]:
    """Per host, the jobs that a job of higher priority may preempt, lowest priority first, then
    the most recently started (choose_victims reads them in this order)."""
    found = {}
    for host, jobs in running.items():
        able = [r for r in jobs if r.may_be_preempted(now)]
        if able:
            found[host] = sorted(able, key=lambda r: (r.priority, -r.started_s, r.job_id))
    return found


@dataclass(frozen=True)
class Preemption:
    """`job_id` starts on `gpu_ids` of `host` once `victims` have stopped."""

    job_id: str
    host: str
    gpu_ids: tuple[int, ...]
    victims: tuple[RunningJob, ...]

    def describe(self) -> str:
        names = ", ".join(v.job_id for v in self.victims)
        return f"preempting {names} on host {self.host}: they save a checkpoint and stop, then it starts there"


@dataclass(frozen=True)
class Claim:
    """GPUs promised to a job whose victims are stopping; nobody else is placed on them."""

    host: str
    gpu_ids: tuple[int, ...]
    victims: tuple[str, ...]
    until_s: float  # past this, the claim lapses and the job waits (or preempts) afresh

    def waiting_reason(self) -> str:
        return (f"waiting for {', '.join(self.victims)} (preempted for it) to save and stop on host "
                f"{self.host}; it starts on GPUs {','.join(map(str, self.gpu_ids))} there")


# fit(host, usable GPUs in order of preference) -> the GPUs the job would take, or None.
Fit = Callable[[str, list[int]], tuple[int, ...] | None]


def _rank(victims: Sequence[RunningJob]) -> tuple[int, tuple[int, ...], tuple[float, ...]]:
    """Fewest first, then lowest priorities (the highest of them counts first), then the most
    recently started."""
    return (len(victims), tuple(sorted((v.priority for v in victims), reverse=True)),
            tuple(sorted(-v.started_s for v in victims)))


def choose_victims(
    job_id: str,
    priority: int,
    gpus: int,
    usable: dict[str, list[int]],
    able: dict[str, list[RunningJob]],
    fit: Fit,
    taken: Set[str] = frozenset(),
) -> Preemption | None:
    """The preemption that lets `job_id` (`priority`, asking for `gpus`) start, or None.

    `usable[host]`: GPUs free and not held for anyone else now; `able[host]`: the jobs there
    that a higher priority may preempt (`candidates`), less those `taken` already; `fit`: which
    GPUs the job would take on a host given GPUs in order of preference (free ones first, so as
    few victims' GPUs as possible are used)."""
    options: list[tuple[tuple[int, float], str, list[RunningJob]]] = []
    for host, jobs in able.items():
        lower = []
        for r in jobs:  # lowest priority first
            if r.priority >= priority:
                break
            if r.job_id not in taken:
                lower.append(r)
        free = usable.get(host, [])
        if lower and len(free) + sum(len(r.gpu_ids) for r in lower) >= gpus:  # else even all would not do
            options.append(((lower[0].priority, -lower[0].started_s), host, lower[:MAX_CANDIDATES]))
    # Hosts whose best victim ranks first come first: once one victim is enough somewhere, a host
    # whose best victim ranks no better cannot beat it (and the search ends).
    options.sort(key=lambda o: (o[0], o[1]))
    best: tuple[tuple[int, tuple[int, ...], tuple[float, ...], str], Preemption] | None = None
    for first, host, lower in options:
        if best is not None and best[0][0] == 1 and first >= (best[0][1][0], best[0][2][0]):
            break
        free = usable.get(host, [])
        for size in range(1, len(lower) + 1):
            if best is not None and size > best[0][0]:
                break
            found = _smallest_on_host(job_id, host, free, lower, size, fit)
            if found is not None:
                key = (*_rank(found.victims), host)
                if best is None or key < best[0]:
                    best = (key, found)
                break  # more victims on this host can only rank lower
    return None if best is None else best[1]


def _smallest_on_host(job_id: str, host: str, free: list[int], candidates: list[RunningJob], size: int,
                      fit: Fit) -> Preemption | None:
    """The best-ranked set of `size` victims on `host` whose GPUs, with the free ones, fit the
    job; None if no set of that size does."""
    best: Preemption | None = None
    for victims in itertools.combinations(candidates, size):
        freed = [g for v in victims for g in v.gpu_ids]
        gpus = fit(host, [*free, *sorted(freed)])
        if gpus is None or not set(gpus) & set(freed):
            continue  # too few GPUs, or it fits without them (then placement would have placed it)
        found = Preemption(job_id, host, gpus, victims)
        if best is None or _rank(victims) < _rank(best.victims):
            best = found
    return best
