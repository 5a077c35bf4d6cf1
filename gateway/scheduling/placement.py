"""Placement: which queued job goes where, now. Pure functions over plain data (DESIGN §4).

`plan(queue, hosts)` gives this pass's assignments and, for each job left waiting, the reason.
Priority first, FIFO within a priority (by submit sequence). A job asking for N GPUs gets N on
one host (best fit: the host left with the fewest free GPUs). The first GPU job that cannot be
placed reserves a host where it fits; later jobs may only use GPUs elsewhere (backfill), so a
large job is never starved by a stream of small ones.

Built to stay within DESIGN §9's 20 ms for 1,000 queued jobs over 100 hosts: hosts are kept in
buckets by their count of usable GPUs, so a plain N-GPU job finds its best fit without looking
at every host, and a job shape that could not be placed is not tried again in the same pass
(resources only shrink during a pass).

`plan_pass` adds preemption (preemption.py): a job left waiting may stop preemptible
lower-priority jobs on one host, and GPUs so claimed are held for it until they are free.

estimates.py walks the same order forward in time to give each queued job an estimated wait.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

import msgspec

from gateway.scheduling.floor_index import FloorIndex
from gateway.scheduling.preemption import Claim, Preemption, RunningJob, candidates, choose_victims
from shared.jobspec import JobRequest
from shared.jobstate import JobState, JobStatus


@dataclass(frozen=True)
class JobNeeds:
    """What the scheduler must know about a job; fixed at submit."""

    priority: int
    submit_seq: int
    gpus: int
    gpu_ids: tuple[int, ...]
    host: str | None
    min_gpu_memory_gb: float | None
    spec: JobRequest
    submitted_by: str = ""


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    attempt: int  # the attempt the job is on now; placing it starts attempt + 1
    needs: JobNeeds
    avoid_host: str | None = None  # its agent just refused it: try elsewhere first
    # Its place among jobs of its priority, where fair share orders them (gateway/scheduling/
    # quotas.py); empty: submit order alone.
    fair: tuple[float, ...] = ()


def queue_order(q: QueuedJob) -> tuple[int, tuple[float, ...], int]:
    """The order the queue is considered in: priority, then fair share, then submit order."""
    return (-q.needs.priority, q.fair, q.needs.submit_seq)


@dataclass
class HostView:
    host: str
    gpu_memory_mb: dict[int, int]  # index -> total memory
    busy: set[int] = field(default_factory=set)
    running: int = 0
    jobs: list[RunningJob] = field(default_factory=list)  # running jobs preemption may look at

    def free(self) -> list[int]:
        return sorted(set(self.gpu_memory_mb) - self.busy)


@dataclass
class PassPlan:
    """What one pass decides: placements, why each other job waits, and preemptions."""

    assignments: list[Assignment] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    preemptions: list[Preemption] = field(default_factory=list)


@dataclass(frozen=True)
class Assignment:
    job_id: str
    attempt: int
    host: str
    gpu_ids: tuple[int, ...]

    def applied_to(self, state: JobState) -> JobState:
        """The job as it is once this placement's `scheduled` event lands (it may be in flight)."""
        return msgspec.structs.replace(state, status=JobStatus.SCHEDULED, attempt=self.attempt, host=self.host,
                                       gpu_ids=self.gpu_ids)


Shape = tuple[int, tuple[int, ...], str | None, float | None]


def _shape(needs: JobNeeds) -> Shape:
    return (needs.gpus, needs.gpu_ids, needs.host, needs.min_gpu_memory_gb)


def _plain(needs: JobNeeds) -> bool:
    """No pinning and no memory floor: any N usable GPUs of any host will do."""
    return needs.gpus > 0 and not needs.gpu_ids and not needs.host and not needs.min_gpu_memory_gb


class _Pool:
    """The GPUs still usable in this pass, per host, with hosts bucketed by usable count."""

    def __init__(self, hosts: dict[str, HostView]) -> None:
        self.hosts = hosts
        self.usable: dict[str, list[int]] = {h: v.free() for h, v in hosts.items()}
        self.buckets: dict[int, set[str]] = defaultdict(set)
        for h, free in self.usable.items():
            self.buckets[len(free)].add(h)
        self.most = max((len(f) for f in self.usable.values()), default=0)
        self.held = 0  # free GPUs reserved in this pass for jobs ahead in the queue
        self.reserved_host: str | None = None  # where the waiting head job is held a place
        self.victims: set[str] = set()  # jobs already chosen for preemption in this pass
        self._able: dict[str, list[RunningJob]] | None = None  # who may be preempted (on first need)
        # The best fit among 1,000 hosts without a look at each, per memory floor asked for in
        # this pass; floor 0 serves plain jobs.
        self.floors: dict[float, FloorIndex] = {0.0: FloorIndex(0.0, self.usable, hosts)}
        self._load = [(v.running, h) for h, v in sorted(hosts.items())]
        heapq.heapify(self._load)

    def _withdraw(self, host: str, gpus: Collection[int], *, running: int = 0) -> int:
        """`gpus` of `host` are no longer usable in this pass (and it runs `running` more jobs);
        how many usable GPUs that took away."""
        free = self.usable[host]
        self.buckets[len(free)].discard(host)
        self.usable[host] = [g for g in free if g not in gpus]
        self.hosts[host].running += running
        self.buckets[len(self.usable[host])].add(host)
        for index in self.floors.values():
            index.refile(host)
        return len(free) - len(self.usable[host])

    def take(self, host: str, gpus: tuple[int, ...]) -> None:
        self._withdraw(host, gpus, running=1)
        self.hosts[host].busy |= set(gpus)

    def reserve(self, host: str, gpus: list[int]) -> None:
        """None of `gpus` on `host` is given out in this pass: a waiting head job needs them."""
        self.held += self._withdraw(host, gpus)

    def hold(self, host: str, gpus: tuple[int, ...]) -> None:
        """`gpus` on `host` are promised (a claim, a preemption): not given out in this pass."""
        self._withdraw(host, gpus)

    def preemption_for(self, q: QueuedJob, now: float) -> Preemption | None:
        """Running jobs whose stop would let `q` start (preemption.py), away from the host held
        for the head job and the host that just refused `q`."""
        if self._able is None:
            self._able = candidates({h: v.jobs for h, v in self.hosts.items() if v.jobs}, now)
        needs = q.needs
        skip = (self.reserved_host, q.avoid_host)
        if needs.host is not None:
            able = {needs.host: self._able[needs.host]} if needs.host in self._able else {}
        else:
            able = self._able
        if skip[0] in able or skip[1] in able:
            able = {h: jobs for h, jobs in able.items() if h not in skip}
        found = choose_victims(q.job_id, needs.priority, needs.gpus, self.usable, able,
                               lambda host, gpus: self.fit(needs, host, gpus), self.victims)
        if found is not None:
            self.victims |= {v.job_id for v in found.victims}
            self.hold(found.host, found.gpu_ids)
        return found

    def largest(self) -> tuple[int, str]:
        for k in range(self.most, -1, -1):
            if self.buckets.get(k):
                return k, min(self.buckets[k])
        return 0, ""

    def best_plain(self, n: int) -> str | None:
        """Best fit for N GPUs: the host with the fewest usable GPUs that still has N, then the
        least loaded."""
        return self.floors[0.0].best(n, self.most)

    def least_loaded(self, pinned: str | None) -> str | None:
        if pinned:
            return pinned if pinned in self.hosts else None
        while self._load:
            running, host = self._load[0]
            if running == self.hosts[host].running:
                return host
            heapq.heapreplace(self._load, (self.hosts[host].running, host))
        return None

    def fit(self, needs: JobNeeds, host: str, usable: list[int]) -> tuple[int, ...] | None:
        view = self.hosts[host]
        if needs.host and needs.host != host:
            return None
        if needs.min_gpu_memory_gb:
            floor_mb = needs.min_gpu_memory_gb * 1024
            usable = [g for g in usable if view.gpu_memory_mb[g] >= floor_mb]
        if needs.gpu_ids:
            return needs.gpu_ids if set(needs.gpu_ids) <= set(usable) else None
        return tuple(usable[: needs.gpus]) if len(usable) >= needs.gpus else None

    def best_with_floor(self, needs: JobNeeds) -> tuple[str, tuple[int, ...]] | None:
        """`best_any` for a job with a memory floor and no pinning, through its FloorIndex."""
        assert needs.min_gpu_memory_gb
        floor_mb = needs.min_gpu_memory_gb * 1024
        index = self.floors.get(floor_mb)
        if index is None:
            index = self.floors[floor_mb] = FloorIndex(floor_mb, self.usable, self.hosts)
        host = index.best(needs.gpus, self.most)
        if host is None:
            return None
        gpus = self.fit(needs, host, self.usable[host])
        return None if gpus is None else (host, gpus)

    def best_any(self, needs: JobNeeds, avoid: str | None = None) -> tuple[str, tuple[int, ...]] | None:
        candidates = [needs.host] if needs.host else sorted(self.hosts)
        best: tuple[tuple[int, int, str], str, tuple[int, ...]] | None = None
        for host in candidates:
            if host not in self.hosts or host == avoid:
                continue
            usable = self.usable[host]
            gpus = self.fit(needs, host, usable)
            if gpus is None:
                continue
            score = (len(usable) - len(gpus), self.hosts[host].running, host)
            if best is None or score < best[0]:
                best = (score, host, gpus)
        return None if best is None else (best[1], best[2])


def plan(queue: list[QueuedJob], hosts: dict[str, HostView]) -> tuple[list[Assignment], dict[str, str]]:
    """Assignments for this pass and, for each job left waiting, the reason (no preemption).
    Mutates `hosts`' busy sets and running counts to include the assignments."""
    result = plan_pass(queue, hosts)
    return result.assignments, result.waiting


def plan_pass(queue: list[QueuedJob], hosts: dict[str, HostView], *, now: float | None = None,
              claims: dict[str, Claim] | None = None) -> PassPlan:
    """`plan`, with preemption when `now` is given: a job that cannot be placed may preempt
    (`HostView.jobs`), and a job holding a `Claim` starts on its claimed GPUs once they are free."""
    ordered = sorted(queue, key=queue_order)
    pool = _Pool(hosts)
    result = PassPlan()
    assignments, waiting = result.assignments, result.waiting
    failed: dict[tuple[Shape, str | None], str] = {}  # shape -> reason: resources only shrink within a pass
    no_victims: dict[tuple[Shape, str | None], int] = {}  # shape -> highest priority that found none
    reserved = False
    promised = {q.job_id: claims[q.job_id] for q in ordered if claims and q.job_id in claims
                and claims[q.job_id].host in hosts}
    for held_for in promised.values():
        pool.hold(held_for.host, held_for.gpu_ids)
    for q in ordered:
        needs = q.needs
        shape = (_shape(needs), q.avoid_host)
        claim = promised.get(q.job_id)
        if claim is not None:
            if set(claim.gpu_ids) & hosts[claim.host].busy:
                waiting[q.job_id] = claim.waiting_reason()
            else:  # the victims are gone and nothing else uses the GPUs: verified free
                pool.take(claim.host, claim.gpu_ids)
                assignments.append(Assignment(q.job_id, q.attempt + 1, claim.host, claim.gpu_ids))
            continue
        fresh = shape not in failed  # else a job of its shape failed already, and reserved if it could
        if not fresh:
            reason = failed[shape]
        else:
            placed = _place(pool, q)
            if placed is not None:
                host, gpus = placed
                pool.take(host, gpus)
                assignments.append(Assignment(q.job_id, q.attempt + 1, host, gpus))
                continue
            reason = _why_waiting(needs, pool)
            if q.avoid_host:
                reason += f" (host {q.avoid_host} refused it a moment ago)"
            failed[shape] = reason
        # Victims only grow scarcer within a pass: a shape that found none at a priority finds
        # none at a lower one either.
        if now is not None and needs.gpus > 0 and needs.priority > no_victims.get(shape, -1):
            preemption = pool.preemption_for(q, now)
            if preemption is not None:
                result.preemptions.append(preemption)
                waiting[q.job_id] = preemption.describe()
                continue
            no_victims[shape] = needs.priority
        waiting[q.job_id] = reason
        if fresh and needs.gpus > 0 and not reserved:
            held = _reservation(needs, pool)
            if held is not None:
                pool.reserve(*held)
                pool.reserved_host = held[0]
                reserved = True
                failed.clear()  # reasons mention the largest free set, which just changed
    return result


def _place(pool: _Pool, q: QueuedJob) -> tuple[str, tuple[int, ...]] | None:
    """Where `q` goes in this pass, if anywhere: any host for a GPU-less job, the best fit for
    a plain one, the best scored host for a pinned or memory-bound one or one refused a moment ago."""
    needs = q.needs
    if needs.gpus == 0 and not needs.gpu_ids:
        target = pool.least_loaded(needs.host)
        return None if target is None else (target, ())
    if q.avoid_host:
        return pool.best_any(needs, avoid=q.avoid_host)
    if _plain(needs):
        target = pool.best_plain(needs.gpus)
        return None if target is None else (target, tuple(pool.usable[target][: needs.gpus]))
    if needs.min_gpu_memory_gb and not needs.host and not needs.gpu_ids:
        return pool.best_with_floor(needs)
    return pool.best_any(needs)


def _reservation(needs: JobNeeds, pool: _Pool) -> tuple[str, list[int]] | None:
    """What the waiting head job holds back: on the host where it fits once GPUs free up and
    most of them are usable already, the GPUs it could use (all, those with enough memory,
    or the pinned ones). Other GPUs there stay open to backfill."""
    best: tuple[tuple[int, str], str, list[int]] | None = None
    for h, view in pool.hosts.items():
        if pool.fit(needs, h, sorted(view.gpu_memory_mb)) is None:
            continue
        if needs.gpu_ids:
            wanted = list(needs.gpu_ids)
        elif needs.min_gpu_memory_gb:
            wanted = [g for g, mb in view.gpu_memory_mb.items() if mb >= needs.min_gpu_memory_gb * 1024]
        else:
            wanted = list(view.gpu_memory_mb)
        key = (len([g for g in pool.usable[h] if g in wanted]), h)
        if best is None or key > best[0]:
            best = (key, h, wanted)
    return None if best is None else (best[1], best[2])


def _why_waiting(needs: JobNeeds, pool: _Pool) -> str:
    if not pool.hosts:
        return "no agent is online"
    if needs.host and needs.host not in pool.hosts:
        return f"host {needs.host} is not online"
    if needs.gpu_ids:
        where = f" on {needs.host}" if needs.host else ""
        ids = ",".join(map(str, needs.gpu_ids))
        hosts = [needs.host] if needs.host else list(pool.hosts)
        if not any(set(needs.gpu_ids) <= set(pool.hosts[h].gpu_memory_mb) for h in hosts):
            most = max(len(pool.hosts[h].gpu_memory_mb) for h in hosts)
            owner = f"host {needs.host} has" if needs.host else "no online host has"
            return f"no such GPU: needs GPUs {ids}, but {owner} them (GPUs are numbered from 0; at most {most})"
        return f"needs GPUs {','.join(map(str, needs.gpu_ids))}{where}, which are busy or reserved"
    need = f"{needs.gpus} GPU{'s' if needs.gpus != 1 else ''}"
    if needs.min_gpu_memory_gb:
        need += f" with >= {needs.min_gpu_memory_gb:g} GB"
    biggest = max((max(v.gpu_memory_mb.values(), default=0) for v in pool.hosts.values()), default=0)
    if needs.min_gpu_memory_gb and biggest < needs.min_gpu_memory_gb * 1024:
        return f"needs {need}; no online GPU has that much memory (largest {biggest / 1024:g} GB)"
    if all(len(v.gpu_memory_mb) < needs.gpus for v in pool.hosts.values()):
        return f"needs {need}; no online host has that many GPUs"
    count, host = pool.largest()
    held = (f"; {pool.held} more free GPU{'s are' if pool.held != 1 else ' is'} held for a job ahead of it"
            if pool.held else "")
    return f"needs {need}; largest free set is {count} on host {host}{held}"
