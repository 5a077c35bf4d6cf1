"""Response shapes of the main API, as msgspec Structs."""

from __future__ import annotations

from typing import Any

import msgspec

from shared import events as ev


class JobSummary(msgspec.Struct, kw_only=True):
    job_id: str
    name: str
    trainer: str
    status: str
    priority: int
    gpus: int
    attempt: int
    host: str | None
    gpu_ids: list[int]
    submitted_s: float
    started_s: float | None
    finished_s: float | None
    exit_code: int | None
    reason: str
    description: str = ""
    submitted_by: str = ""  # the token's name that submitted it
    anomaly_kinds: list[str] = []  # the watchdog's findings (nan, stall, idle_gpu): a marker
    # How far it got and, while it runs, the time left (its latest progress report).
    percent: float | None = None
    eta_s: float | None = None


class JobList(msgspec.Struct, kw_only=True):
    jobs: list[JobSummary]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = None  # pass as `cursor` for the next page


class JobStatusView(msgspec.Struct, kw_only=True):
    job_id: str
    status: str
    attempt: int
    host: str | None
    gpu_ids: list[int]
    exit_code: int | None
    signal: int | None
    reason: str
    started_s: float | None
    finished_s: float | None
    queue_position: int | None = None
    waiting_reason: str | None = None


class ProgressView(ev.Progress, kw_only=True):
    job_id: str
    status: str
    attempt: int
    updated_s: float | None = None
    latest_metrics: dict[str, float] = {}  # noqa: RUF012 (msgspec copies a mutable default per instance)


class MetricPoint(msgspec.Struct, array_like=False, kw_only=True):
    attempt: int  # a resumed or retried job's series are per attempt, never interleaved
    step: int | None
    epoch: float | None
    value: float
    ts_s: float


class MetricColumns(msgspec.Struct, omit_defaults=True):
    """One series as columns (`format=columns`): point i is (attempt[i], step[i], ...); the
    fields a request's `fields` left out are absent."""

    attempt: msgspec.Raw | None = None
    step: msgspec.Raw | None = None
    epoch: msgspec.Raw | None = None
    value: msgspec.Raw | None = None
    ts_s: msgspec.Raw | None = None


METRIC_FIELDS = tuple(f.name for f in msgspec.structs.fields(MetricColumns))


class MetricSeries(msgspec.Struct, kw_only=True):
    job_id: str
    type: str
    series: dict[str, list[MetricPoint] | MetricColumns]
    format: str = "points"
    # Per series, how many of its points the limit left out (the earliest); absent: none.
    left_out: dict[str, int] = {}


class GpuSample(msgspec.Struct, kw_only=True):
    ts_s: float
    utilization_pct: float | None
    memory_used_mb: int | None


class JobGpuSeries(msgspec.Struct, kw_only=True):
    """One GPU of one attempt of a job, sample by sample (a heartbeat's; downsampled to at most
    `points` buckets, each the mean of its samples)."""

    attempt: int
    host: str
    gpu_index: int
    mean_utilization_pct: float | None
    samples: list[GpuSample]


class JobGpus(msgspec.Struct, kw_only=True):
    job_id: str
    mean_utilization_pct: float | None
    gpus: list[JobGpuSeries]


class LogLine(msgspec.Struct, kw_only=True):
    seq: int
    attempt: int
    ts_s: float
    stream: str
    level: str
    kind: str
    text: str


class LogPage(msgspec.Struct, kw_only=True):
    job_id: str
    lines: list[LogLine]
    next_after_seq: int | None


class EventView(msgspec.Struct, kw_only=True):
    stream_seq: int
    type: str
    attempt: int
    ts_s: float
    applied: bool
    note: str | None
    data: Any


class JobDetail(JobSummary, kw_only=True):
    """A job's summary and everything else the API knows of it."""

    description: str
    signal: int | None
    last_lines: list[str]
    pid: int | None
    run_dir: str | None
    stdout_path: str | None
    stderr_path: str | None
    spec: Any
    status_history: list[dict[str, Any]]
    progress: ProgressView | None
    checkpoints: list[dict[str, Any]]
    exports: list[dict[str, Any]] = []
    anomalies: list[dict[str, Any]] = []  # the watchdog's `anomaly` events
    # Mean utilisation of the job's GPUs over every heartbeat sample of its attempts.
    gpu_utilization_mean_pct: float | None = None
    # Attempts ended by preemption (each put the job back in the queue without using a retry),
    # and the checkpoint its next attempt starts from.
    preemptions: int = 0
    resume_from: str | None = None


class SubmitResponse(msgspec.Struct, kw_only=True):
    job_id: str
    status: str
    message: str
    queue_position: int | None = None
    estimated_wait_s: float | None = None
    estimated_wait_time: str | None = None  # seed 002's field: the estimate in words
    jobs: list[str] = []  # an array's or sweep's jobs, in index order (job_id names them all)


class ExportResponse(msgspec.Struct, kw_only=True):
    job_id: str
    export_id: str
    status: str
    checkpoint: str
    host: str
    message: str


class StopResponse(msgspec.Struct, kw_only=True):
    """What an action on one job answers: stop, start, retry, resume, removal from the queue."""

    job_id: str
    status: str
    message: str


class Health(msgspec.Struct, kw_only=True):
    status: str  # ok | degraded
    nats: str  # connected | reconnecting | disconnected | not connected
    jetstream: str  # ok, or since when and why the gateway's writes fail
    projector: str  # ok, or why the projection is behind
    projector_lag: dict[str, int]


# ---- cluster: GPUs, hosts, queue ------------------------------------------------------------


class GpuView(msgspec.Struct, kw_only=True):
    host: str
    index: int
    uuid: str
    name: str
    state: str  # free | busy | offline
    job_id: str | None
    memory_total_mb: int
    memory_used_mb: int
    memory_free_mb: int
    utilization_pct: float | None
    temperature_c: float | None
    power_w: float | None
    pids: list[int]
    simulated: bool
    host_online: bool


class GpuList(msgspec.Struct, kw_only=True):
    gpus: list[GpuView]
    total: int
    free: int
    busy: int
    offline: int
    simulated: bool


class HostStatus(msgspec.Struct, kw_only=True):
    host: str
    status: str  # online | offline
    last_seen_s: float
    seconds_since_heartbeat: float
    agent_started_s: float
    heartbeat_interval_s: float
    cpu_percent: float
    memory_total_mb: int
    memory_used_mb: int
    disk_free_mb: int
    gpus: int
    gpus_free: int
    simulated: bool
    running_jobs: list[str]
    note: str


class QueueEntry(msgspec.Struct, kw_only=True):
    job_id: str
    name: str
    position: int
    priority: int
    gpus: int
    gpu_ids: list[int] | None
    host: str | None
    min_gpu_memory_gb: float | None
    attempt: int
    submitted_s: float
    waiting_reason: str
    estimated_wait_s: float | None
    anomaly_kinds: list[str] = []  # what the watchdog found in its earlier attempts (a retry's)


class QueueView(msgspec.Struct, kw_only=True):
    length: int
    processor_running: bool
    jobs: list[QueueEntry]


class QueueJobStatus(msgspec.Struct, kw_only=True):
    job_id: str
    status: str
    in_queue: bool
    position: int | None
    queue_length: int
    priority: int
    waiting_reason: str | None
    estimated_wait_s: float | None


class ProcessorStatus(msgspec.Struct, kw_only=True):
    running: bool
    status: str  # running | stopped
    leader: str | None
    this_replica: str
    this_replica_leads: bool
    leader_since_s: float | None
    queue_length: int


class ProcessResult(msgspec.Struct, kw_only=True):
    leader: str
    processor_running: bool
    placed: list[dict[str, Any]]
    still_waiting: int
    message: str = ""


class SystemStatus(msgspec.Struct, kw_only=True):
    status: str
    hosts_online: int
    hosts_offline: int
    gpus_total: int
    gpus_free: int
    gpus_busy: int
    gpus_simulated: bool
    jobs_running: int
    queue_length: int
    processor_running: bool
    scheduler_leader: str | None
    nats: str
    jetstream: str
    projector: str
    projector_lag: dict[str, int]
