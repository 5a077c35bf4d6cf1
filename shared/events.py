"""Every event on the event streams, as msgspec Structs in one tagged union (DESIGN §3).

Rules for changing this file: new fields get defaults and go last; nothing is renamed or
retyped in place, because the streams keep old events forever. Unknown fields are ignored on
decode, so an older reader survives a newer writer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import msgspec

from shared.cluster_events import AnyControl as AnyControl
from shared.cluster_events import GpuState as GpuState
from shared.cluster_events import HostHeartbeat as HostHeartbeat
from shared.cluster_events import HostJob as HostJob
from shared.cluster_events import QuotaSet as QuotaSet
from shared.cluster_events import SchedulerControl as SchedulerControl
from shared.cluster_events import SchedulerPaused as SchedulerPaused
from shared.cluster_events import SchedulerResumed as SchedulerResumed
from shared.jobspec import JobRequest

Outcome = Literal["succeeded", "failed", "stopped"]


class JobEvent(msgspec.Struct, kw_only=True, tag_field="type"):
    job_id: str
    attempt: int = 0
    ts_s: float


# ---- lifecycle (these move the state machine) ---------------------------------------------


class JobSubmitted(JobEvent, tag="submitted"):
    spec: JobRequest
    submitted_by: str = ""


class JobHeld(JobEvent, tag="held"):
    reason: str = ""


class JobReleased(JobEvent, tag="released"):
    pass


class JobScheduled(JobEvent, tag="scheduled"):
    host: str
    gpu_ids: list[int] = []


class JobRefused(JobEvent, tag="refused"):
    host: str
    reason: str


class JobStarted(JobEvent, tag="started"):
    host: str
    pid: int
    run_dir: str
    stdout_path: str
    stderr_path: str


class JobStopRequested(JobEvent, tag="stop_requested"):
    force: bool = False
    grace_s: float = 30.0
    requested_by: str = ""


class JobCancelled(JobEvent, tag="cancelled"):
    """A job stopped before any agent ran it."""

    reason: str


class JobExited(JobEvent, tag="exited"):
    outcome: Outcome
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    last_lines: list[str] = []
    # Stream sequence of the attempt's last log batch: the projector shows the exit only once
    # those lines are queryable, so "succeeded" never comes before the job's own output.
    log_stream_seq: int = 0
    # The attempt's latest checkpoint (path), if it saved one: where a preempted job resumes.
    checkpoint: str | None = None


class JobPreempted(JobEvent, tag="preempted"):
    """The scheduler stops a running preemptible job for a higher-priority one (`by`): the
    attempt is stopped gracefully (`grace_s`), and its exit puts the job back in the queue to
    resume from the checkpoint it saved, without using a retry."""

    by: str
    host: str = ""
    grace_s: float = 60.0
    reason: str = ""


class JobRetried(JobEvent, tag="retried"):
    """An ended job goes back to the queue for a new attempt (the user's `retry` or `resume`).
    `resume_from`: a checkpoint (path or name) the next attempt starts from; "latest" lets the
    trainer pick its most recent one."""

    resume_from: str | None = None
    requested_by: str = ""


class JobLost(JobEvent, tag="lost"):
    """The attempt's host stopped heartbeating past the grace period (sent by the scheduler)."""

    reason: str
    host: str = ""


# ---- observations (they do not move the state machine) ------------------------------------


class Progress(msgspec.Struct, kw_only=True):
    """How far a training has got: the one shape of progress. Parsers report it (their Sink's
    `progress` takes these fields), the `progress` event carries it, the API shows it
    (ProgressView), the `progress` table has its columns."""

    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    total_epochs: int | None = None
    percent: float | None = None
    rate_steps_s: float | None = None
    eta_s: float | None = None
    # True when total/percent/ETA were derived by trainyard rather than printed by the trainer.
    estimated: bool = False


PROGRESS_FIELDS = msgspec.structs.fields(Progress)
PROGRESS_NAMES = tuple(f.name for f in PROGRESS_FIELDS)


class JobProgress(JobEvent, tag="progress"):
    """Progress's fields, spelled out here because a msgspec Struct has a single base and the
    event's stored wire shape is flat (tests/unit/test_log_batch.py checks that they agree)."""

    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    total_epochs: int | None = None
    percent: float | None = None
    rate_steps_s: float | None = None
    eta_s: float | None = None
    estimated: bool = False

    @classmethod
    def of(cls, job_id: str, attempt: int, ts_s: float, progress: Progress) -> JobProgress:
        return cls(job_id=job_id, attempt=attempt, ts_s=ts_s, **msgspec.structs.asdict(progress))

    def progress(self) -> Progress:
        return Progress(**{name: getattr(self, name) for name in PROGRESS_NAMES})


class MetricsRecorded(JobEvent, tag="metrics"):
    """A batch of metric points, column-wise so the projector inserts it in one statement.
    JSON has no nan or inf: such a point travels as 0.0 in `value` with its index and its
    spelling in `nonfinite`; `values()` gives them back. Build one with `of_points`."""

    first_seq: int
    step: list[int | None]
    epoch: list[float | None]
    name: list[str]
    value: list[float]
    point_ts_s: list[float]
    nonfinite: list[tuple[int, Literal["nan", "inf", "-inf"]]] = []

    @classmethod
    def of_points(cls, *, job_id: str, attempt: int, ts_s: float, first_seq: int, step: list[int | None],
                  epoch: list[float | None], name: list[str], value: list[float],
                  point_ts_s: list[float]) -> MetricsRecorded:
        odd = [] if all(map(math.isfinite, value)) else [(i, v) for i, v in enumerate(value) if not math.isfinite(v)]
        if odd:
            value = list(value)
            for i, _ in odd:
                value[i] = 0.0
        return cls(job_id=job_id, attempt=attempt, ts_s=ts_s, first_seq=first_seq, step=step, epoch=epoch,
                   name=name, value=value, point_ts_s=point_ts_s,
                   nonfinite=[(i, "nan" if math.isnan(v) else "inf" if v > 0 else "-inf") for i, v in odd])

    def values(self) -> list[float]:
        if not self.nonfinite:
            return self.value
        value = list(self.value)
        for i, spelled in self.nonfinite:
            if 0 <= i < len(value):
                value[i] = float(spelled)
        return value


class CheckpointSaved(JobEvent, tag="checkpoint"):
    path: str
    step: int | None = None


class JobDeleted(JobEvent, tag="deleted"):
    """An ended job leaves every view; its events stay in the stream and in `job_events`."""

    requested_by: str = ""


class AgentNote(JobEvent, tag="agent_note"):
    """Something an agent did (or declined to do) about a job that changes nothing, said so
    that it shows in the job's history: a stop for an attempt it does not run, a log cut."""

    host: str
    what: str  # stop_ignored | log_truncated
    detail: str = ""


class JobAnomaly(JobEvent, tag="anomaly"):
    """The agent's watchdog saw the training go wrong while the process lives on: a watched
    metric nan or inf, no step for too long, GPUs idle. At most one per kind per attempt."""

    host: str
    kind: Literal["nan", "stall", "idle_gpu"]
    action: Literal["notify", "stop"]  # stop: the attempt is being stopped, and fails
    detail: str  # "loss was nan at step 3000"
    metric: str | None = None
    step: int | None = None
    value: str | None = None  # as the trainer wrote it ("nan", "inf"): JSON has no nan
    gpus: list[int] = []  # idle_gpu: the job's GPUs that stayed idle


class WebhookDelivery(JobEvent, tag="webhook"):
    """One try at telling the job's webhook that it ended."""

    delivery_id: str
    event: str  # job.succeeded, job.failed, job.stopped, job.lost, job.anomaly, job.progress.<N>
    url: str
    try_number: int
    ok: bool
    status_code: int | None = None
    error: str = ""
    final: bool = False  # delivered, or no try is left


class ExportRequested(JobEvent, tag="export_requested"):
    """A tracked export step of a finished job (swift: merge the LoRA into the base model)."""

    export_id: str
    host: str
    checkpoint: str
    requested_by: str = ""


class ExportFinished(JobEvent, tag="export_finished"):
    export_id: str
    outcome: Literal["succeeded", "failed"]
    path: str | None = None
    reason: str = ""
    last_lines: list[str] = []


V = TypeVar("V", str, float)


def runs_of(values: list[V]) -> list[tuple[V, int]]:
    """[(value, how many in a row), ...]: a column that repeats itself, compactly."""
    return [(value, len(list(same))) for value, same in itertools.groupby(values)]


def expand(runs: Sequence[tuple[V, int]]) -> list[V]:
    return [value for value, count in runs for _ in range(count)]


class LogBatch(JobEvent, tag="logs"):
    """Consecutive log lines of one attempt; line i has seq `first_seq + i`.

    Shaped for the projector's bulk insert (DESIGN §9, 200k lines/s): the texts travel joined
    by newlines (no line holds one: lines are what the agent split on them), so the gateway
    decodes one string and Arrow splits it in C, with no Python object per line; the other
    columns repeat themselves (the lines of one read share their time and stream, most share
    level and kind) and travel as runs. Build one with `of_lines`; a batch whose parts do not
    agree on `count` is refused when decoded."""

    first_seq: int
    count: int
    text: str
    line_ts_s: list[tuple[float, int]]
    stream: list[tuple[str, int]]
    level: list[tuple[str, int]]
    kind: list[tuple[str, int]]
    # Rows of the attempt per stream (stdout, stderr, system) up to the end of this batch: a
    # restarted agent reads the last batch to learn where each output file's rows stand.
    stream_rows: dict[str, int] = {}

    def __post_init__(self) -> None:
        if self.count < 1 or self.text.count("\n") != self.count - 1:
            raise ValueError(f"log batch of {self.count} lines with {self.text.count(chr(10)) + 1} texts")
        for name in ("line_ts_s", "stream", "level", "kind"):
            runs = getattr(self, name)
            if sum(n for _, n in runs) != self.count or any(n < 1 for _, n in runs):
                raise ValueError(f"log batch of {self.count} lines: its {name} runs do not cover them")

    @classmethod
    def of_lines(cls, *, job_id: str, attempt: int, ts_s: float, first_seq: int, line_ts_s: list[float],
                 stream: list[str], level: list[str], kind: list[str], text: list[str],
                 stream_rows: dict[str, int] | None = None) -> LogBatch:
        joined = "\n".join(text)
        if joined.count("\n") != len(text) - 1:  # a line holding a newline (none of a trainer's do)
            joined = "\n".join(t.replace("\n", " ") for t in text)
        return cls(job_id=job_id, attempt=attempt, ts_s=ts_s, first_seq=first_seq, count=len(text),
                   text=joined, line_ts_s=runs_of(line_ts_s),
                   stream=runs_of(stream), level=runs_of(level), kind=runs_of(kind),
                   stream_rows=stream_rows or {})

    @property
    def end_seq(self) -> int:
        """The seq after this batch's last line."""
        return self.first_seq + self.count

    def texts(self) -> list[str]:
        return self.text.split("\n")

    def times(self) -> list[float]:
        return expand(self.line_ts_s)


LIFECYCLE = (
    JobSubmitted,
    JobHeld,
    JobReleased,
    JobScheduled,
    JobRefused,
    JobStarted,
    JobStopRequested,
    JobCancelled,
    JobExited,
    JobLost,
    JobRetried,
    JobPreempted,
)

AnyJobEvent = (
    JobSubmitted
    | JobHeld
    | JobReleased
    | JobScheduled
    | JobRefused
    | JobStarted
    | JobStopRequested
    | JobCancelled
    | JobExited
    | JobLost
    | JobRetried
    | JobPreempted
    | JobProgress
    | MetricsRecorded
    | CheckpointSaved
    | ExportRequested
    | ExportFinished
    | JobDeleted
    | AgentNote
    | JobAnomaly
    | WebhookDelivery
    | LogBatch
)


def tag_of(event_type: type[msgspec.Struct]) -> str:
    return event_type.__struct_config__.tag  # type: ignore[return-value]


_encoder = msgspec.json.Encoder()
_job_decoder = msgspec.json.Decoder(AnyJobEvent)
_host_decoder = msgspec.json.Decoder(HostHeartbeat)
_control_decoder = msgspec.json.Decoder(AnyControl)


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def decode_job_event(data: bytes) -> AnyJobEvent:
    return _job_decoder.decode(data)


def decode_heartbeat(data: bytes) -> HostHeartbeat:
    return _host_decoder.decode(data)


def decode_control(data: bytes) -> AnyControl:
    return _control_decoder.decode(data)
