"""The projector: the event streams into DuckDB (DESIGN §7).

Each stream is read in natural batches; a whole batch is applied in one DuckDB transaction
together with the last applied stream sequence, so a restart re-applies nothing (anything at or
below the stored sequence is skipped) and skips nothing (reading resumes right after it).
Rows go in through Arrow tables, never row by row (writers.py, arrow.py).

It also keeps, in memory, what the scheduler and the API need without a query (view.py).

A batch is handled in two steps. `prepare` decodes the lifecycle events and evolves the job
states in memory (microseconds); the scheduler sees those `live_states` at once. `write` then
puts the batch into DuckDB on the writer thread (milliseconds), and only after its commit do
`states`, which the API answers from, move. So placing a job never waits for a disk commit,
and the API never shows a status whose rows are not yet queryable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import duckdb
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from gateway.projection.admission import LIFECYCLE_KINDS, refusal, report_accepted
from gateway.projection.batch import JobItem, PreparedBatch, decoded, log_batches
from gateway.projection.checkpoints import IdleCheckpoints
from gateway.projection.feeds import open_feed, until_done
from gateway.projection.retention import GpuSampleRetention
from gateway.projection.view import REFUSALS_KEPT, JobView
from gateway.projection.writers import BatchWriter
from gateway.scheduling.placement import JobNeeds
from shared import events as ev
from shared import subjects
from shared.aio import cancel_and_wait
from shared.jobstate import IllegalTransition, check, evolve
from shared.nats.pullfeed import ConsumerGone, PullFeed, skipped_after

log = logging.getLogger("trainyard.projector")

# Heartbeats are projected in batches at most this often (_follow says why).
HOST_BATCH_GAP_S = 0.25
LEAVING = b'"leaving":true'  # in a goodbye heartbeat (msgspec writes JSON without spaces)


class Projector(JobView):
    def __init__(self, con: duckdb.DuckDBPyConnection, replica: str, *, batch: int = 2048,
                 gpu_samples_keep_s: float = 0.0) -> None:
        super().__init__(con)
        self.replica = replica
        self.batch = batch
        self.retention = GpuSampleRetention(gpu_samples_keep_s)
        # One writer thread and cursor per stream: a log batch never queues behind a job-event
        # batch. They append to different tables and update different offset rows, so DuckDB's
        # optimistic concurrency lets their transactions run side by side.
        self._writers = {s: ThreadPoolExecutor(1, thread_name_prefix=f"projector-{s}") for s in subjects.EVENT_STREAMS}
        self._cursors = {s: con.cursor() for s in subjects.EVENT_STREAMS}
        self.writer = BatchWriter(self, self._cursors)
        self.checkpoints = IdleCheckpoints(con)
        self._tasks: list[asyncio.Task[None]] = []
        self._feeds: list[PullFeed] = []
        self.healthy = False
        self.last_error = ""
        # Streams whose last write failed (a full disk, a DuckDB fault), or whose consumer could
        # not be made again yet (a cluster not answering after a reconnect), with the error:
        # retried with back-off until it goes through (feeds.until_done).
        self.write_errors: dict[str, str] = {}
        self.read_errors: dict[str, str] = {}
        # Per stream, its last sequence when this process started: until the projection has it,
        # a job it does not show yet may exist (a fresh or set-aside file is being replayed).
        self.catch_up_to: dict[str, int] = {}
        self._stopping = False

    def write(self, batch: PreparedBatch) -> None:
        """Put a prepared batch into DuckDB (on the stream's writer thread)."""
        self.writer.write(batch)
        if batch.msgs and batch.stream != subjects.HOST_STREAM:  # heartbeats wait for nothing
            self.checkpoints.wrote()

    async def start(self, nc: Client, js: JetStreamContext) -> None:
        for stream in subjects.EVENT_STREAMS:
            self.catch_up_to[stream] = (await js.stream_info(stream)).state.last_seq
            consumer = subjects.projector_consumer(self.replica, stream)
            feed = await open_feed(nc, js, stream, consumer, self.applied[stream] + 1, self.batch)
            self._feeds.append(feed)
            refeed = functools.partial(self._refeed, nc, js, stream, consumer)
            task = asyncio.create_task(self._follow(stream, feed, refeed), name=f"projector-{stream}")
            task.add_done_callback(self._follow_ended)
            self._tasks.append(task)
        self._tasks.append(asyncio.create_task(self.checkpoints.run(), name="projector-checkpoints"))
        self.healthy = True

    def health(self) -> str:
        """"ok", or what is wrong, as /health shows it."""
        if not self.healthy:
            return f"stopped: {self.last_error}"
        if self.write_errors:
            return "writes failing, retrying: " + "; ".join(f"{s}: {e}" for s, e in self.write_errors.items())
        if self.read_errors:
            return "reading again failing, retrying: " + "; ".join(f"{s}: {e}" for s, e in self.read_errors.items())
        return self.catching_up() or "ok"

    @property
    def ok(self) -> bool:
        return self.healthy and not self.write_errors and not self.read_errors and self.catching_up() is None

    def catching_up(self) -> str | None:
        """What the projection has yet to replay of what the streams held when it started."""
        behind = [f"{stream} {self.applied[stream]:,} of {target:,}" for stream, target in self.catch_up_to.items()
                  if self.applied[stream] < target]
        if not behind:
            self.catch_up_to.clear()  # caught up once is caught up: later lag is ordinary lag
            return None
        return "catching up with the event streams after a restart (" + ", ".join(behind) + ")"

    def _follow_ended(self, task: asyncio.Task[None]) -> None:
        """A stream's follower ends only at stop. One that ends otherwise (a bug) must not go
        unseen: the projection would silently freeze, so /health says so."""
        if self._stopping or not self.healthy:  # a stop, or a failed write that said why
            return
        error = "cancelled" if task.cancelled() else repr(task.exception())
        self.healthy = False
        self.last_error = f"{task.get_name()} ended: {error}"
        log.error("projector stopped: %s", self.last_error, exc_info=None if task.cancelled() else task.exception())

    async def stop(self) -> None:
        self._stopping = True
        await cancel_and_wait(self._tasks)
        for feed in self._feeds:
            await feed.stop()
        for writer in self._writers.values():
            writer.shutdown(wait=True)
        for cursor in self._cursors.values():
            cursor.close()
        self.checkpoints.close()

    # ---- the loop ----------------------------------------------------------------------------
    async def _refeed(self, nc: Client, js: JetStreamContext, stream: str, consumer: str) -> PullFeed:
        """A fresh consumer from the first sequence not yet applied, and a feed on it. A refeed
        comes after a reconnect or a leader change, when the cluster may not answer for a while
        yet (timeouts, "JetStream system temporarily unavailable"): it is tried until it works.
        Giving up here stopped the stream's projection for good (a 3-node cluster with a node
        restarting showed it)."""
        feed = await until_done(lambda: open_feed(nc, js, stream, consumer, self.applied[stream] + 1, self.batch),
                                "reading %s again", self.read_errors, stream)
        self._feeds = [f for f in self._feeds if f.started]
        self._feeds.append(feed)
        return feed

    async def _follow(self, stream: str, feed: PullFeed, refeed: Callable[[], Awaitable[PullFeed]]) -> None:
        # Heartbeats are written at most every HOST_BATCH_GAP_S, many at a time: one per host
        # every few seconds would otherwise be one small DuckDB transaction each, which at 100
        # hosts kept half a core busy; nothing waits on a heartbeat by the millisecond.
        gap_s = HOST_BATCH_GAP_S if stream == subjects.HOST_STREAM else 0.0
        last = 0.0  # the loop's time of the last fetch
        fresh = True  # just (re)started at the first unapplied sequence: a jump is the stream's own
        while True:
            # ... except an agent's goodbye: its host is offline at once, as a clean stop promises.
            if gap_s:
                await feed.gather_until(last + gap_s, LEAVING)
            last = asyncio.get_running_loop().time()
            try:
                msgs = await feed.next_batch(max_msgs=self.batch)
            except ConsumerGone as exc:
                log.warning("projector: the consumer of %s went away (%s); reading again from %s", stream, exc,
                            self.applied[stream] + 1)
                await feed.stop()
                feed, fresh = await refeed(), True
                continue
            # The consumers do not ack (the DuckDB file is the checkpoint), so a batch the server
            # sent while the connection or the stream's leader went away is never sent again.
            if not fresh and (jump := skipped_after(self.applied[stream], msgs)) is not None:
                # (A stream's head purged by its limits also jumps: after the fresh start, that
                # jump is taken as it is.)
                log.warning("projector: %s %s (a delivery lost in a reconnect); reading again", stream, jump)
                await feed.stop()
                feed, fresh = await refeed(), True
                continue
            fresh = fresh and not msgs
            if msgs:
                self.pending[stream] = msgs[-1].metadata.num_pending or 0
            if stream == subjects.JOB_STREAM:
                await self._wait_for_logs_of_exits(msgs)
            batch = self.prepare(stream, msgs)
            self._announce(batch)
            await self._write_until_done(stream, batch)
            if stream == subjects.HOST_STREAM and self.retention.due(now := time.time()):
                await asyncio.get_running_loop().run_in_executor(
                    self._writers[stream], self.retention.prune, self._cursors[stream], now)
            self._merge(batch)

    async def _write_until_done(self, stream: str, batch: PreparedBatch) -> None:
        """Write `batch`, trying again while it fails: nothing of a failed batch was committed,
        and skipping it would lose events, so the stream waits here (the API serves what is
        committed, /health says why it is behind) and goes on by itself once the write
        succeeds, e.g. when a full disk has room again."""
        loop = asyncio.get_running_loop()
        await until_done(lambda: loop.run_in_executor(self._writers[stream], self.write, batch),
                         "writing %s", self.write_errors, stream)

    async def _wait_for_logs_of_exits(self, msgs: list[Msg]) -> None:
        needed = 0
        for msg in msgs:
            if (subject := subjects.parse_job_subject(msg.subject)) and subject.kind == "exited":
                try:
                    event = ev.decode_job_event(msg.data)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, ev.JobExited):
                    needed = max(needed, event.log_stream_seq)
        if needed:
            try:
                await self.wait_applied(subjects.LOG_STREAM, needed, timeout_s=5.0)
            except TimeoutError:
                log.warning("log stream behind seq %s; showing the exit anyway", needed)

    def _announce(self, batch: PreparedBatch) -> None:
        """Make the evolved states live for the scheduler before the batch is written."""
        for _, control in batch.controls:
            self.note_control(control)
        if batch.controls:
            batch.jobs_changed = True
        self.needs.update(batch.needs)
        self.live_states.update(batch.states)
        for job_id in batch.deleted:
            self.live_states.pop(job_id, None)
        for item in batch.jobs:
            if isinstance(item.event, ev.WebhookDelivery) and item.event.final:
                self.webhooks_settled.add((item.event.job_id, item.event.event))
        self.percent.update(batch.percent)
        anomalies = [a for a in batch.anomalies if self.note_anomaly(a)]
        self.heartbeats.update(batch.heartbeats)
        for beat in batch.beats:
            self.note_gpu_use(beat)
        for logs in batch.logs:
            self.live_logs.announce(logs)
        if batch.logs:
            self._notify()  # log followers take these before the commit
        if batch.jobs_changed or batch.heartbeats or batch.percent or anomalies:
            for callback in self.on_jobs_changed:
                callback()

    def _merge(self, batch: PreparedBatch) -> None:
        """The batch is committed: the API may show it."""
        self.states.update(batch.states)
        for item in batch.jobs:
            if item.subject is not None:  # (control events have none)
                self.job_versions[item.subject.job_id] = item.seq
                if not item.applied and item.note:
                    self.refusals[item.seq] = item.note
        while len(self.refusals) > REFUSALS_KEPT:
            self.refusals.popitem(last=False)
        for job_id in batch.deleted:
            self.states.pop(job_id, None)
            self.needs.pop(job_id, None)
            self.attempt_hosts.pop(job_id, None)
            self.anomalies.pop(job_id, None)
            self.gpu_use.pop(job_id, None)
            self.latest_progress.pop(job_id, None)
            self.latest_loss.pop(job_id, None)
            self.live_logs.deleted(job_id)
        for logs in batch.logs:
            self.live_logs.committed(logs)
        self.applied[batch.stream] = max(self.applied[batch.stream], batch.last_seq)
        self._notify()

    # ---- preparing a batch (event loop: decode and evolve, no I/O) -----------------------------
    def prepare(self, stream: str, msgs: list[Msg]) -> PreparedBatch:
        fresh = [(m.metadata.sequence.stream, m) for m in msgs]
        fresh = [(seq, m) for seq, m in fresh if seq > self.applied[stream]]
        batch = PreparedBatch(stream, last_seq=fresh[-1][0] if fresh else self.applied[stream], msgs=fresh)
        if stream == subjects.JOB_STREAM:
            for seq, msg in fresh:
                batch.jobs.append(self._evolve_item(seq, msg, batch))
        elif stream == subjects.LOG_STREAM:
            batch.logs = self._new_lines(log_batches(fresh))
        elif stream == subjects.HOST_STREAM:
            for beat in decoded(fresh, ev.decode_heartbeat, "host event"):
                batch.heartbeats[beat.host] = beat
                batch.beats.append(beat)
        return batch

    def _new_lines(self, batches: list[ev.LogBatch]) -> list[ev.LogBatch]:
        """The batches that continue their attempt's lines. One that starts at or below a line
        already stored is a replay or a forgery (a host's credentials may publish log batches
        for any job id on its own subjects): dropped, with an error logged, never stored twice."""
        kept: list[ev.LogBatch] = []
        reached: dict[tuple[str, int], int] = {}
        for b in batches:
            key = (b.job_id, b.attempt)
            last = reached.get(key, self.live_logs.stored_through(b.job_id, b.attempt))
            if b.first_seq <= last:
                log.error("log batch %s..%s of %s attempt %s dropped: lines up to %s are stored already",
                          b.first_seq, b.end_seq - 1, b.job_id, b.attempt, last)
                continue
            reached[key] = b.end_seq - 1
            kept.append(b)
        return kept

    def _note_percent(self, item: JobItem, batch: PreparedBatch) -> None:
        """The percent of a job that asked for progress webhooks; the decoded event stays on
        the item, so the writer does not decode it again."""
        assert item.subject is not None
        job_id = item.subject.job_id
        needs = self.needs.get(job_id) or batch.needs.get(job_id)
        if needs is None or not needs.spec.webhook_progress:
            return
        try:
            event = ev.decode_job_event(item.msg.data)
        except msgspec.DecodeError:
            return  # the writer records it as undecodable
        item.event = event
        if (
            report_accepted(self.attempt_hosts, item, event)
            and isinstance(event, ev.JobProgress)
            and event.percent is not None
        ):
            batch.percent[job_id] = event.percent

    def _note_anomaly(self, item: JobItem, batch: PreparedBatch) -> None:
        """An anomaly the watchdog of the attempt's own host reported (decoded here, once)."""
        try:
            event = ev.decode_job_event(item.msg.data)
        except msgspec.DecodeError:
            return  # the writer records it as undecodable
        item.event = event
        if report_accepted(self.attempt_hosts, item, event) and isinstance(event, ev.JobAnomaly):
            batch.anomalies.append(event)

    def _evolve_item(self, seq: int, msg: Msg, batch: PreparedBatch) -> JobItem:
        item = JobItem(seq, msg)
        if msg.subject.startswith("ty.ctl."):
            try:
                batch.controls.append((seq, ev.decode_control(msg.data)))
            except msgspec.DecodeError:
                log.error("undecodable control event %s skipped", msg.subject)
            item.applied = False  # not a job event: recorded in scheduler_events instead
            item.note = "control"
            return item
        item.subject = subject = subjects.parse_job_subject(msg.subject)
        if (why := refusal(subject, None)) is not None:
            item.applied, item.note = False, why
            return item
        assert subject is not None
        if subject.kind == "progress":
            self._note_percent(item, batch)
        elif subject.kind == "anomaly":
            self._note_anomaly(item, batch)
        if subject.kind not in LIFECYCLE_KINDS:
            return item  # metrics, progress, checkpoints: decoded (and checked) by the writer
        try:
            event = ev.decode_job_event(msg.data)
        except msgspec.DecodeError as exc:
            item.applied, item.note = False, f"undecodable: {exc}"
            return item
        item.event = event
        if (why := refusal(subject, event)) is not None:
            item.applied, item.note = False, why
            return item
        if isinstance(event, ev.JobDeleted):
            state = batch.states.get(event.job_id) or self.live_states.get(event.job_id)
            try:
                check(state, event)
            except IllegalTransition as exc:
                item.applied, item.note = False, f"not deleted: {exc}"
            else:
                batch.deleted.append(event.job_id)
                batch.states.pop(event.job_id, None)
                batch.jobs_changed = True
            return item
        if not isinstance(event, ev.LIFECYCLE):
            return item
        before = batch.states.get(event.job_id) or self.live_states.get(event.job_id)
        if subject.host is not None and (before is None or before.host != subject.host):
            # A host reports only on the job placed on it (the state machine fences attempts).
            item.applied = False
            where = f"on {before.host}" if before and before.host else "on no host"
            item.note = f"sent by host {subject.host}; the job is {where}"
            return item
        try:
            after = evolve(before, event)
        except IllegalTransition as exc:
            item.applied, item.note = False, str(exc)
            return item
        batch.states[event.job_id] = after
        batch.jobs_changed = True
        if isinstance(event, ev.JobScheduled):
            self.attempt_hosts.setdefault(event.job_id, {})[event.attempt] = event.host
        if isinstance(event, ev.JobSubmitted):
            spec = event.spec
            batch.submit_seqs[event.job_id] = seq
            batch.needs[event.job_id] = JobNeeds(
                priority=spec.priority, submit_seq=seq, gpus=spec.gpu_count(),
                gpu_ids=tuple(spec.gpu_ids or ()), host=spec.host,
                min_gpu_memory_gb=spec.min_gpu_memory_gb, spec=spec, submitted_by=event.submitted_by,
            )
        return item
