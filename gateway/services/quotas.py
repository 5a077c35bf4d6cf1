"""Quotas as the API sets and shows them (the rule itself: gateway/scheduling/quotas.py). A
quota is a `quota_set` event on the job stream's control subject, so it is history like the
rest, survives restarts, and every gateway replica applies it in the same order."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from gateway.projection.projector import Projector
from gateway.scheduling.quotas import owners
from gateway.writer import EventWriter
from shared import events as ev
from shared.clock import now_s
from shared.jobstate import ON_HOST

Limit = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None


class QuotaRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Both null (or {}): no limits."""

    max_gpus: Limit = None
    max_running_jobs: Limit = None


class QuotaView(msgspec.Struct, kw_only=True):
    kind: Literal["user", "project"]
    name: str
    max_gpus: int | None
    max_running_jobs: int | None
    gpus_in_use: int
    running_jobs: int


class QuotaService:
    def __init__(self, writer: EventWriter, projector: Projector) -> None:
        self.writer = writer
        self.projector = projector

    async def set(self, kind: Literal["user", "project"], name: str, limits: QuotaRequest, by: str) -> QuotaView:
        event = ev.QuotaSet(ts_s=now_s(), by=by, kind=kind, name=name, max_gpus=limits.max_gpus,
                            max_running_jobs=limits.max_running_jobs)
        await self.writer.publish_and_wait(event)
        return self._view(kind, name)

    def list(self) -> list[QuotaView]:
        return [self._view(kind, name) for kind, name in sorted(self.projector.quotas)]  # type: ignore[arg-type]

    def _view(self, kind: Literal["user", "project"], name: str) -> QuotaView:
        quota = self.projector.quotas.get((kind, name))
        gpus = jobs = 0
        for job_id, state in self.projector.live_states.items():
            if state.status in ON_HOST and (n := self.projector.needs.get(job_id)) and (kind, name) in owners(n):
                gpus += len(state.gpu_ids)
                jobs += 1
        return QuotaView(kind=kind, name=name, max_gpus=quota.max_gpus if quota else None,
                         max_running_jobs=quota.max_running_jobs if quota else None,
                         gpus_in_use=gpus, running_jobs=jobs)
