"""What stands between a queued job and the planner, and the order the queue is read in: the
rules of dependencies.py, arrays.py and quotas.py (pure) over the projection's current view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.scheduling.arrays import parallel_limits
from gateway.scheduling.dependencies import dependency_verdicts
from gateway.scheduling.placement import QueuedJob, queue_order
from gateway.scheduling.quotas import Owner, fair_order, quota_limits, recent_gpu_hours

if TYPE_CHECKING:
    from gateway.projection.projector import Projector

# Recent GPU-hours move slowly and cost a walk over every job: recomputed at most this often.
USAGE_REFRESH_S = 10.0


class QueueGates:
    def __init__(self, projector: Projector, fair_share_half_life_s: float) -> None:
        self.projector = projector
        self.half_life_s = fair_share_half_life_s  # 0: submit order within a priority
        self._usage: tuple[float, dict[Owner, float]] | None = None

    def ordered(self, jobs: list[QueuedJob], now: float) -> list[QueuedJob]:
        """Priority, then fair share (when on), then submit order."""
        if self.half_life_s <= 0:
            return sorted(jobs, key=queue_order)
        if self._usage is None or now - self._usage[0] >= USAGE_REFRESH_S:
            self._usage = (now, recent_gpu_hours(self.projector.live_states, self.projector.needs, now,
                                                 self.half_life_s))
        return fair_order(jobs, self._usage[1])

    def verdicts(self, queue: list[QueuedJob]) -> tuple[list[QueuedJob], dict[str, str], dict[str, str]]:
        """(the jobs the planner may place, in order; job -> why it waits before GPUs are even
        looked at; job -> why it can never run): dependencies, an array's max_parallel, quotas."""
        states, needs = self.projector.live_states, self.projector.needs
        ready, blocked, doomed = dependency_verdicts(queue, states)
        ready, capped = parallel_limits(ready, states, needs)
        ready, over = quota_limits(ready, states, needs, self.projector.quotas)
        return ready, blocked | capped | over, doomed
