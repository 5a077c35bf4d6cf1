"""The scheduler's hands for preemption: what the planner may preempt, and carrying it out.

The planner (placement.plan_pass, preemption.py) decides; this module shows it the running
preemptible jobs, publishes each victim's `preempted` event and its graceful stop, and keeps the
claims that hold the freed GPUs for the job that preempted them until it is placed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.scheduling.placement import HostView
from gateway.scheduling.preemption import Claim, Preemption, RunningJob
from shared import events as ev
from shared.commands import StopJob
from shared.jobstate import JobState, JobStatus

if TYPE_CHECKING:
    from gateway.projection.projector import Projector
    from gateway.writer import EventWriter

log = logging.getLogger("trainyard.scheduler")

# A claim outlives its victims' grace period by this much: time for their exits to be projected
# and the next pass to place the job. Past it, the job waits (or preempts) afresh.
CLAIM_SLACK_S = 30.0


class Preempter:
    def __init__(self, projector: Projector, writer: EventWriter) -> None:
        self.projector = projector
        self.writer = writer
        self.claims: dict[str, Claim] = {}

    def show_running(self, hosts: dict[str, HostView]) -> None:
        """Give each online host's view the running jobs that could be preempted (the planner
        checks priority, count and run time)."""
        needs = self.projector.needs
        for job_id, state in self.projector.live_states.items():
            if state.status is not JobStatus.RUNNING or state.host not in hosts or state.preempted_by:
                continue
            spec = needs[job_id].spec
            if not spec.preemptible or state.stop_requested:
                continue
            hosts[state.host].jobs.append(RunningJob(
                job_id=job_id, gpu_ids=state.gpu_ids, priority=spec.priority,
                started_s=state.started_s or state.changed_s, preemptible=True,
                preemptions=state.preemptions, max_preemptions=spec.max_preemptions,
                min_runtime_s=spec.min_runtime_s))

    def live_claims(self, now: float) -> dict[str, Claim]:
        """The claims still in force: their job still queued and their time not up."""
        states = self.projector.live_states
        self.claims = {job: c for job, c in self.claims.items()
                       if now < c.until_s and job in states and states[job].status is JobStatus.QUEUED}
        return self.claims

    def being_served(self) -> set[str]:
        """Jobs some running attempt is already being preempted for (seen in the projection, so
        a new leader does not preempt a second set of victims for them)."""
        return {s.preempted_by for s in self.projector.live_states.values()
                if s.preempted_by and s.status is JobStatus.STOPPING}

    async def carry_out(self, preemptions: list[Preemption], now: float) -> None:
        served = self.being_served()
        states = self.projector.live_states
        for p in preemptions:
            if p.job_id in served or p.job_id in self.claims:
                continue
            live = [v for v in p.victims if _still_running(states.get(v.job_id), p.host)]
            if len(live) != len(p.victims):
                continue  # the projection moved since the snapshot: the next pass decides again
            grace = max(self.projector.needs[v.job_id].spec.preempt_grace_s for v in p.victims)
            self.claims[p.job_id] = Claim(p.host, p.gpu_ids, tuple(v.job_id for v in p.victims),
                                          now + grace + CLAIM_SLACK_S)
            priority = self.projector.needs[p.job_id].spec.priority
            for victim in p.victims:
                await self._preempt(states[victim.job_id], p.job_id, priority, now)

    async def _preempt(self, state: JobState, by: str, priority: int, now: float) -> None:
        spec = self.projector.needs[state.job_id].spec
        reason = (f"preempted by {by} (priority {priority} over {spec.priority}): saving a checkpoint and "
                  f"stopping within {spec.preempt_grace_s:g}s; it goes back to the queue to resume")
        log.info("job %s attempt %s: %s", state.job_id, state.attempt, reason)
        assert state.host is not None
        await self.writer.publish(ev.JobPreempted(job_id=state.job_id, attempt=state.attempt, ts_s=now, by=by,
                                                  host=state.host, grace_s=spec.preempt_grace_s, reason=reason))
        stop = StopJob(job_id=state.job_id, attempt=state.attempt, ts_s=now, grace_s=spec.preempt_grace_s,
                       reason=reason)
        await self.writer.publish(stop, host=state.host, unique=f"preempt:{by}")


def _still_running(state: JobState | None, host: str) -> bool:
    return (state is not None and state.status is JobStatus.RUNNING and state.host == host
            and not state.preempted_by and not state.stop_requested)
