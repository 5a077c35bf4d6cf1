"""One batch of an event stream as the projector handles it: its messages, and what `prepare`
made of them for `write` (decoded, evolved, refused with a note)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nats.aio.msg import Msg

from gateway.scheduling.placement import JobNeeds
from shared import events as ev
from shared import subjects
from shared.jobstate import JobState

log = logging.getLogger("trainyard.projector")

T = TypeVar("T")


@dataclass
class JobItem:
    """One message of the job stream; lifecycle events are decoded and evolved in `prepare`."""

    seq: int
    msg: Msg
    event: ev.JobEvent | None = None
    applied: bool = True
    note: str | None = None
    subject: subjects.JobSubject | None = None


@dataclass
class PreparedBatch:
    stream: str
    last_seq: int
    msgs: list[tuple[int, Msg]] = field(default_factory=list)
    jobs: list[JobItem] = field(default_factory=list)
    states: dict[str, JobState] = field(default_factory=dict)
    needs: dict[str, JobNeeds] = field(default_factory=dict)
    submit_seqs: dict[str, int] = field(default_factory=dict)
    heartbeats: dict[str, ev.HostHeartbeat] = field(default_factory=dict)  # latest per host
    beats: list[ev.HostHeartbeat] = field(default_factory=list)  # all of them, for gpu_samples
    logs: list[ev.LogBatch] = field(default_factory=list)  # the log stream's, decoded
    controls: list[tuple[int, ev.AnyControl]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Latest percent of jobs that asked for progress webhooks (the others' progress is left to
    # the writer to decode).
    percent: dict[str, float] = field(default_factory=dict)
    anomalies: list[ev.JobAnomaly] = field(default_factory=list)  # accepted ones, in order
    jobs_changed: bool = False


def decoded(msgs: list[tuple[int, Msg]], decode: Callable[[bytes], T], what: str) -> Iterator[T]:
    """Each message decoded; one that does not decode is skipped, with an error logged."""
    return (event for event in _decoded_or_none(msgs, decode, what) if event is not None)


def _decoded_or_none(msgs: list[tuple[int, Msg]], decode: Callable[[bytes], T], what: str) -> Iterator[T | None]:
    for _, msg in msgs:
        try:
            yield decode(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable %s on %s skipped", what, msg.subject)
            yield None


def log_batches(msgs: list[tuple[int, Msg]]) -> list[ev.LogBatch]:
    """The log batches of `msgs`; one that is not the log of the job its subject names (which
    the sending host's NATS user may publish) is skipped, with an error logged."""
    batches = []
    for (_, msg), event in zip(msgs, _decoded_or_none(msgs, ev.decode_job_event, "log batch"), strict=True):
        subject = subjects.parse_job_subject(msg.subject)
        if event is None or subject is None:
            continue
        if not isinstance(event, ev.LogBatch) or event.job_id != subject.job_id:
            log.error("%s on %s skipped: not a log batch of that job", ev.tag_of(type(event)), msg.subject)
            continue
        batches.append(event)
    return batches
