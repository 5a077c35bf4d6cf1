"""Events that are about no one job: each host's heartbeat (stream TY_HOST) and the scheduler's
controls (subject `ty.ctl.scheduler.<type>` in the job stream). The rules of shared/events.py
hold here too; shared/events.py re-exports these, so `ev.HostHeartbeat` reads as before."""

from __future__ import annotations

from typing import Literal

import msgspec

# ---- hosts ------------------------------------------------------------------------------


class GpuState(msgspec.Struct, kw_only=True):
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_used_mb: int = 0
    utilization_pct: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    pids: list[int] = []
    simulated: bool = False


class HostJob(msgspec.Struct, kw_only=True):
    """An attempt an agent is running, as its heartbeat reports it."""

    job_id: str
    attempt: int
    gpu_ids: list[int] = []
    pid: int | None = None


class HostHeartbeat(msgspec.Struct, kw_only=True, tag_field="type", tag="heartbeat"):
    host: str
    ts_s: float
    agent_started_s: float
    interval_s: float
    cpu_percent: float
    memory_total_mb: int
    memory_used_mb: int
    disk_free_mb: int
    gpus: list[GpuState] = []
    running_jobs: list[str] = []
    gpu_note: str = ""
    jobs: list[HostJob] = []  # the same jobs with their attempts: lets the scheduler fence a returning host
    leaving: bool = False  # the agent's last beat on a clean shutdown: offline at once


# ---- scheduler control (subject `ty.ctl.scheduler.<type>` in the job stream) --------------


class SchedulerControl(msgspec.Struct, kw_only=True, tag_field="type"):
    ts_s: float
    by: str = ""
    reason: str = ""


class SchedulerPaused(SchedulerControl, tag="paused"):
    """The queue processor is stopped: nothing new is placed until it is resumed."""


class SchedulerResumed(SchedulerControl, tag="resumed"):
    pass


class QuotaSet(SchedulerControl, tag="quota_set"):
    """An admin's limits on a user (a token's name) or a project; both None lifts them."""

    kind: Literal["user", "project"]
    name: str
    max_gpus: int | None = None
    max_running_jobs: int | None = None


AnyControl = SchedulerPaused | SchedulerResumed | QuotaSet
