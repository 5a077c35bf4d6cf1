"""What a restarted agent needs to re-adopt an attempt: its state file, what the streams already
hold of it, and the points in its output files where reading may safely resume (DESIGN §5)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import events as ev
from shared import subjects
from shared.commands import StartJob

log = logging.getLogger("trainyard.agent.run")


class RunState(msgspec.Struct, kw_only=True):
    """The agent's state file for one attempt: what a restarted agent needs to re-adopt it.
    Written at spawn, about once a second while output flows, when the trainer ends and once its
    exit is reported."""

    job_id: str
    attempt: int
    pid: int  # the keeper (agent/process/keeper.py), which leads the trainer's process group
    create_time: float
    run_dir: str
    stdout_path: str
    stderr_path: str
    command: StartJob | None = None
    # Per output stream: bytes of the file fully turned into log rows, and how many rows they
    # made, at a point the server had acknowledged them all.
    offsets: dict[str, int] = {}
    rows: dict[str, int] = {}
    logged_bytes: int = 0
    checkpoints: list[str] = []  # reported (acknowledged) checkpoint paths
    returncode: int | None = None  # the trainer's, once reaped
    reported: bool = False  # its end is published: nothing left to adopt
    # A stop was asked for (its command is acknowledged, so never redelivered): a trainer that
    # dies of the signals while no agent watches was stopped, not failed.
    stop_requested: bool = False
    announced: bool = False  # its `started` event is published (an adopting agent publishes it if not)
    # Why it was stopped as a failure (its time limit, the watchdog's `stop`): it ends failed so.
    fail_reason: str = ""


class StateFile:
    """Where an attempt's RunState is kept, written atomically (a rename)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        self.failing = False  # the last write failed (said once, until one succeeds)

    def write(self, state: RunState, *, must: bool, on_first_failure: Callable[[OSError], None]) -> bool:
        """True once written. A failed write (a full disk) raises if `must`, else is said once
        and returns False: the trainer is watched on all the same and the file is written at the
        next chance. Until then a restarted agent resumes from an older point, which costs
        re-reading output, never a line (the streams say what they hold)."""
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(state))
            os.replace(tmp, self.path)
        except OSError as exc:
            if must:
                raise
            if not self.failing:
                log.warning("%s: could not save the state file (%s); watching on", self.name, exc)
                on_first_failure(exc)
            self.failing = True
            return False
        if self.failing:
            log.info("%s: the state file is saved again", self.name)
        self.failing = False
        return True


class Published(msgspec.Struct, kw_only=True):
    """What the streams already hold of an attempt: where a re-adopting agent picks up."""

    log_end: int = 0  # seq of the next log row
    rows: dict[str, int] = {}  # log rows per output stream ("stdout", "stderr", "system")
    metric_end: int = 0


async def published_so_far(js: JetStreamContext, host: str, job_id: str, attempt: int) -> Published:
    """Ask the streams for the attempt's last log batch and metrics batch (retrying while NATS
    is unreachable: guessing would lose or double lines)."""
    async def last(stream: str, subject: str) -> ev.LogBatch | ev.MetricsRecorded | None:
        delay_s = 0.1
        while True:
            try:
                msg = await js.get_last_msg(stream, subject, direct=True)
            except NotFoundError:
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading the last message on %s failed (%s); retrying", subject, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
                continue
            event = ev.decode_job_event(msg.data or b"")
            if isinstance(event, (ev.LogBatch, ev.MetricsRecorded)) and event.attempt == attempt:
                return event
            return None

    logs = await last(subjects.LOG_STREAM, subjects.job_log(job_id, host))
    metrics = await last(subjects.JOB_STREAM, subjects.job_event(job_id, "metrics", host))
    out = Published()
    if isinstance(logs, ev.LogBatch):
        out.log_end, out.rows = logs.end_seq, dict(logs.stream_rows)
    if isinstance(metrics, ev.MetricsRecorded):
        out.metric_end = metrics.first_seq + len(metrics.name)
    return out


class ResumePoints:
    """Per output stream, points (rows made so far, file offset) where the file had been fully
    turned into rows. The newest point whose rows the server acknowledged is where a restarted
    agent resumes reading; older ones are dropped."""

    def __init__(self, start: dict[str, tuple[int, int]]) -> None:
        self._points = {stream: collections.deque([point]) for stream, point in start.items()}

    def note(self, stream: str, rows: int, offset: int) -> None:
        points = self._points[stream]
        if points[-1] != (rows, offset):
            points.append((rows, offset))

    def safe(self, acked_rows: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        out = {}
        for stream, points in self._points.items():
            limit = acked_rows.get(stream, 0)
            while len(points) > 1 and points[1][0] <= limit:
                points.popleft()
            out[stream] = points[0]
        return out
