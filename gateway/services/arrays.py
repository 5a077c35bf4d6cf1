"""Submitting an array or a sweep (gateway/scheduling/arrays.py expands it): each child is held
to the checks a job submitted alone meets, then submitted as one."""

from __future__ import annotations

import msgspec

from gateway import schemas as views
from gateway.errors import Conflict, InvalidField
from gateway.projection.projector import Projector
from gateway.scheduling.arrays import ARRAY_ENV, ArrayError, expand
from gateway.services.submission import PathChecks, check_request
from gateway.writer import EventWriter
from shared import events as ev
from shared.clock import now_s
from shared.ids import new_job_id
from shared.jobspec import JobRequest
from shared.jobstate import JobState
from shared.watch import WatchPolicy


def refuse_array_fields(spec: JobRequest) -> None:
    """What only trainyard sets, and what only an array means."""
    if spec.array_id is not None or spec.array_index is not None:
        raise InvalidField("array_id and array_index are set by trainyard on the jobs of an array", field="array_id")
    if spec.array is not None and spec.sweep:
        raise InvalidField("give array or sweep, not both", field="sweep")
    if spec.max_parallel is not None and spec.array is None and not spec.sweep:
        raise InvalidField("max_parallel applies to an array or a sweep", field="max_parallel")


def array_children(spec: JobRequest, parent_id: str, role: str, paths: PathChecks) -> list[JobRequest]:
    """The children, checked: a sweep value may land in a path field, an hf flag or a command's
    environment, so each child is checked as the request was (role-gated variables and flags,
    paths confined to the allowed roots). trainyard's own array variables are not the user's."""
    try:
        children = expand(spec, parent_id)
    except ArrayError as exc:
        raise InvalidField(str(exc), field=exc.field) from None
    for child in children:
        check_request(msgspec.structs.replace(child, env={k: v for k, v in child.env.items() if k not in ARRAY_ENV}),
                      role)
    return [paths.check(child) for child in children]


class ArrayJobs:
    """JobService's half for arrays and sweeps: submitting one, and acting on all of its jobs by
    the parent's id. What it needs of the service is declared here."""

    projector: Projector
    writer: EventWriter
    paths: PathChecks
    watch: WatchPolicy

    def state(self, job_id: str) -> JobState:
        raise NotImplementedError

    def check_owner(self, job_id: str, role: str, user: str) -> None:
        raise NotImplementedError

    async def stop(self, job_id: str, *, force: bool, grace_s: float | None, user: str = "") -> views.StopResponse:
        raise NotImplementedError

    async def _submit_array(self, spec: JobRequest, role: str, user: str) -> views.SubmitResponse:
        """One job per child of the array or sweep; the parent's id names them all."""
        parent = self._fresh_id()
        children = array_children(spec, parent, role, self.paths)
        ids: list[str] = []
        for i, child in enumerate(children):
            ids.append(job_id := self._fresh_id(ids))
            event = ev.JobSubmitted(job_id=job_id, attempt=0, ts_s=now_s(), spec=self.watch.filled_in(child),
                                    submitted_by=user)
            last = i == len(children) - 1  # the answer shows them all once the last is projected
            await (self.writer.publish_and_wait(event) if last else self.writer.publish(event))
        return views.SubmitResponse(
            job_id=parent, status="queued", jobs=ids,
            message=f"{'sweep' if spec.sweep else 'array'} of {len(ids)} jobs accepted; "
                    f"list them with GET /jobs?array={parent}, stop them all with POST /jobs/{parent}/stop")

    def array_members(self, array_id: str) -> list[str]:
        """The jobs of the array or sweep `array_id` names, in index order ([] if it names none)."""
        if array_id in self.projector.live_states:
            return []
        found = [(n.spec.array_index or 0, j) for j, n in self.projector.needs.items() if n.spec.array_id == array_id]
        return [j for _, j in sorted(found)]

    async def stop_array(self, array_id: str, members: list[str], *, force: bool, grace_s: float | None,
                         role: str, user: str) -> views.StopResponse:
        """Stop every job of the array that has not ended (each as its own stop)."""
        for job_id in members:
            self.check_owner(job_id, role, user)
        live = [j for j in members if not self.state(j).is_terminal]
        for job_id in live:
            try:
                await self.stop(job_id, force=force, grace_s=grace_s, user=user)
            except Conflict:
                pass  # it ended meanwhile
        return views.StopResponse(job_id=array_id, status="stopping" if live else "ended",
                                  message=f"stop sent to {len(live)} of the array's {len(members)} jobs")

    def _fresh_id(self, taken: list[str] | None = None) -> str:
        """A new job id (ids of one second differ in 24 random bits: an array of 1,000 would
        draw the same one about 3 % of the time)."""
        while (job_id := new_job_id()) in self.projector.live_states or job_id in (taken or ()):
            pass
        return job_id
