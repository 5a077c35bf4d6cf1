"""Writing a prepared batch into DuckDB, on the stream's writer thread: one transaction per
batch, together with the stream sequence it reaches (a restart re-applies nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from gateway.projection.admission import decode_checked
from gateway.projection.arrow import LOG_COLUMNS, METRIC_COLUMNS, SMALL_BATCH_ROWS, Tables, sequence
from gateway.projection.batch import PreparedBatch
from gateway.projection.blocks import MetricBlocks
from gateway.projection.view import JobView
from shared import events as ev
from shared import subjects
from shared.ids import job_key
from shared.jobstate import JobState

_spec_encoder = msgspec.json.Encoder()

# What a deleted job leaves behind: nothing but its rows in job_events.
_JOB_TABLES = ("jobs", "progress", "checkpoints", "exports")
_JOB_KEYED_TABLES = ("logs", "metrics", "metric_blocks")
# Up to this many moved jobs, each is an UPDATE of the columns that changed (_update_job_rows).
FEW_ROWS = 3


def _state_columns(state: JobState) -> dict[str, object]:
    """The `jobs` columns that follow the job's status."""
    return {
        "status": state.status.value, "attempt": state.attempt, "host": state.host,
        "gpu_ids": list(state.gpu_ids), "started_s": state.started_s,
        "finished_s": state.finished_s, "exit_code": state.exit_code, "signal": state.signal,
        "reason": state.reason, "stop_requested": state.stop_requested, "pid": state.pid,
        "run_dir": state.run_dir, "stdout_path": state.stdout_path,
        "stderr_path": state.stderr_path, "last_lines": list(state.last_lines),
        "failures": state.failures, "updated_s": state.changed_s, "resume_from": state.resume_from,
        "preempted_by": state.preempted_by, "preemptions": state.preemptions,
    }


class BatchWriter:
    """One per projector; `write` runs on a stream's writer thread, with that stream's cursor."""

    def __init__(self, view: JobView, cursors: dict[str, duckdb.DuckDBPyConnection]) -> None:
        self.view = view
        self._cursors = cursors
        self.tables = Tables(view.con)
        self.blocks = MetricBlocks()  # used on the job stream's writer thread only

    def write(self, batch: PreparedBatch) -> None:
        if not batch.msgs:
            return
        con = self._cursors[batch.stream]
        con.execute("BEGIN TRANSACTION")
        try:
            if batch.stream == subjects.JOB_STREAM:
                self._write_job_events(con, batch)
            elif batch.stream == subjects.LOG_STREAM:
                self._apply_logs(con, batch.logs)
            elif batch.stream == subjects.HOST_STREAM:
                self._write_host_events(con, batch)
            con.execute(
                "UPDATE projector_offsets SET last_seq = ? WHERE stream = ?", [batch.last_seq, batch.stream]
            )
            con.execute("COMMIT")
        except BaseException:
            if batch.stream == subjects.JOB_STREAM:
                self.blocks.abandoned()
            # A failed COMMIT has already rolled back (DuckDB ends the transaction): a second
            # rollback would fail and hide the error that matters, e.g. "No space left on device".
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        if batch.stream == subjects.JOB_STREAM:
            self.blocks.committed()

    def _apply_logs(self, con: duckdb.DuckDBPyConnection, batches: list[ev.LogBatch]) -> None:
        """Columns built in Arrow from the batches as they travel (ev.LogBatch): the texts
        split in C, the repeated values repeated in C; no Python object per line."""
        if sum(b.count for b in batches) <= SMALL_BATCH_ROWS:
            cols: dict[str, list] = {k: [] for k in LOG_COLUMNS}
            for b in batches:
                for name, values in zip(LOG_COLUMNS, self._log_values(b), strict=True):
                    cols[name].extend(values)
            self.tables.insert(con, "logs", cols)
            return
        parts = [self._log_arrays(b) for b in batches]
        self.tables.insert(
            con,
            "logs",
            {
                name: pa.concat_arrays([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
                for i, name in enumerate(LOG_COLUMNS)
            },
        )

    def _write_metrics(self, con: duckdb.DuckDBPyConnection, batches: list[ev.MetricsRecorded]) -> None:
        """A few points (a job reporting now and then) bound as parameters; more through Arrow.
        Then the blocks they complete (projection/blocks.py)."""
        if not batches:
            return
        if sum(len(b.name) for b in batches) > SMALL_BATCH_ROWS:
            rows = self.tables.metric_rows(batches)
            self.blocks.write(con, rows)
            self.tables.run_with(con, rows,
                                 f"INSERT INTO metrics ({', '.join(METRIC_COLUMNS)}) SELECT * FROM arrow_rows")
            return
        self.blocks.write(con, self.tables.metric_rows(batches))
        cols: dict[str, list] = {k: [] for k in METRIC_COLUMNS}
        for b in batches:
            n = len(b.name)
            columns: tuple[Iterable[Any], ...] = (
                [b.job_id] * n, [job_key(b.job_id)] * n, [b.attempt] * n, range(b.first_seq, b.first_seq + n),
                b.step, b.epoch, b.name, b.values(), b.point_ts_s)
            for name, values in zip(METRIC_COLUMNS, columns, strict=True):
                cols[name].extend(values)
        self.tables.insert(con, "metrics", cols)

    @staticmethod
    def _log_values(b: ev.LogBatch) -> tuple[list, ...]:
        return ([b.job_id] * b.count, [job_key(b.job_id)] * b.count, [b.attempt] * b.count,
                list(range(b.first_seq, b.end_seq)), b.times(), ev.expand(b.stream), ev.expand(b.level),
                ev.expand(b.kind), b.texts())

    def _log_arrays(self, b: ev.LogBatch) -> list[pa.Array]:
        runs = self.tables.runs
        return [
            runs("logs", "job_id", [(b.job_id, b.count)]),
            runs("logs", "job_key", [(job_key(b.job_id), b.count)]),
            runs("logs", "attempt", [(b.attempt, b.count)]),
            sequence(b.first_seq, b.count),
            runs("logs", "ts_s", b.line_ts_s),
            runs("logs", "stream", b.stream),
            runs("logs", "level", b.level),
            runs("logs", "kind", b.kind),
            pc.split_pattern(pa.array([b.text], pa.string()), "\n").flatten(),
        ]

    def _write_job_events(self, con: duckdb.DuckDBPyConnection, batch: PreparedBatch) -> None:
        events_cols: dict[str, list] = {
            k: [] for k in ("stream_seq", "job_id", "job_key", "attempt", "type", "ts_s", "data", "applied", "note")
        }
        metric_batches: list[ev.MetricsRecorded] = []
        ckpt_cols: dict[str, list] = {k: [] for k in ("job_id", "attempt", "path", "step", "ts_s")}
        new_jobs: dict[str, list] = {}
        progress: dict[str, ev.JobProgress] = {}
        exports: list[ev.ExportRequested | ev.ExportFinished] = []
        if batch.controls:
            c = [(seq, e) for seq, e in batch.controls]
            self.tables.insert(con, "scheduler_events", {
                "stream_seq": [seq for seq, _ in c], "type": [ev.tag_of(type(e)) for _, e in c],
                "ts_s": [e.ts_s for _, e in c], "by_role": [e.by for _, e in c], "reason": [e.reason for _, e in c],
                "data": [ev.encode(e).decode() for _, e in c],
            })
        for item in batch.jobs:
            if item.note == "control":
                continue
            seq, msg = item.seq, item.msg
            event = (
                item.event
                if item.event is not None or not item.applied
                else decode_checked(self.view.attempt_hosts, item)
            )
            if event is None:  # undecodable, or refused on its subject alone
                kind = "undecodable" if item.note and item.note.startswith("undecodable") else (
                    item.subject.kind if item.subject else "unknown")
                job_id = item.subject.job_id if item.subject else ""
                self._event_row(events_cols, seq, job_id, 0, kind, 0.0, msg.data, False, item.note)
                continue
            if item.applied:
                if isinstance(event, ev.MetricsRecorded):  # points only: not a row of job_events
                    metric_batches.append(event)
                    if "loss" in event.name:  # the latest `loss` point (Prometheus, per running job)
                        last = len(event.name) - 1 - event.name[::-1].index("loss")
                        self.view.latest_loss[event.job_id] = (event.attempt, event.values()[last])
                    continue
                if isinstance(event, ev.JobSubmitted):
                    # No state: the job was deleted later in this batch (a replay reads a whole
                    # life at once), so it gets no row; its events are recorded below.
                    if (state := batch.states.get(event.job_id)) is not None:
                        self._new_job_row(new_jobs, seq, event, state)
                elif isinstance(event, ev.JobProgress):
                    progress[event.job_id] = event
                elif isinstance(event, ev.CheckpointSaved):
                    for key, value in (("job_id", event.job_id), ("attempt", event.attempt),
                                       ("path", event.path), ("step", event.step), ("ts_s", event.ts_s)):
                        ckpt_cols[key].append(value)
                elif isinstance(event, (ev.ExportRequested, ev.ExportFinished)):
                    exports.append(event)
            # Filed under the job its subject names (a refused body may claim another).
            job_id = item.subject.job_id if item.subject else event.job_id
            self._event_row(events_cols, seq, job_id, event.attempt, ev.tag_of(type(event)),
                            event.ts_s, msg.data, item.applied, item.note)
        self.tables.insert(con, "jobs", new_jobs)
        self._update_job_rows(con, [st for j, st in batch.states.items() if j not in batch.submit_seqs])
        self.tables.insert(con, "job_events", events_cols)
        self._write_metrics(con, metric_batches)
        self.tables.insert(con, "checkpoints", ckpt_cols)
        self._write_exports(con, exports)
        if progress:
            self.view.latest_progress.update(progress)
            p = list(progress.values())
            self.tables.replace_by_key(con, "progress", ("job_id",), {
                "job_id": [e.job_id for e in p], "attempt": [e.attempt for e in p],
                **{name: [getattr(e, name) for e in p] for name in ev.PROGRESS_NAMES},
                "ts_s": [e.ts_s for e in p],
            })
        # Last, so that they remove whatever this batch wrote of a job it also deleted (a replay
        # reads a whole life at once); the projector forgets it in memory on commit (_merge).
        for job_id in batch.deleted:
            for table in _JOB_TABLES:
                con.execute(f"DELETE FROM {table} WHERE job_id = ?", [job_id])
            for table in _JOB_KEYED_TABLES:
                con.execute(f"DELETE FROM {table} WHERE job_key = ? AND job_id = ?", [job_key(job_id), job_id])
            self.blocks.forget(job_id)

    @staticmethod
    def _write_exports(con: duckdb.DuckDBPyConnection, events: list[ev.ExportRequested | ev.ExportFinished]) -> None:
        """Export steps are rare: a statement each, in stream order."""
        for e in events:
            if isinstance(e, ev.ExportRequested):
                con.execute(
                    "INSERT INTO exports (export_id, job_id, attempt, status, checkpoint, requested_s) "
                    "VALUES (?, ?, ?, 'running', ?, ?)", [e.export_id, e.job_id, e.attempt, e.checkpoint, e.ts_s])
            else:
                con.execute(
                    "UPDATE exports SET status = ?, path = ?, reason = ?, finished_s = ? WHERE export_id = ?",
                    [e.outcome, e.path, e.reason, e.ts_s, e.export_id])

    @staticmethod
    def _event_row(cols: dict[str, list], seq: int, job_id: str, attempt: int, type_: str,
                   ts_s: float, data: bytes, applied: bool, note: str | None) -> None:
        cols["stream_seq"].append(seq)
        cols["job_id"].append(job_id)
        cols["job_key"].append(job_key(job_id))
        cols["attempt"].append(attempt)
        cols["type"].append(type_)
        cols["ts_s"].append(ts_s)
        cols["data"].append(data.decode("utf-8", "replace"))
        cols["applied"].append(applied)
        cols["note"].append(note)

    @staticmethod
    def _new_job_row(cols: dict[str, list], seq: int, event: ev.JobSubmitted, state: JobState) -> None:
        """The job's row as of the end of this batch (so it needs no UPDATE in the same batch)."""
        spec = event.spec
        values = {
            "job_id": event.job_id, "submit_seq": seq, "name": spec.name,
            "description": spec.description, "trainer": spec.trainer, "priority": spec.priority,
            "gpus": spec.gpu_count(), "requested_gpu_ids": list(spec.gpu_ids) if spec.gpu_ids else None,
            "requested_host": spec.host, "min_gpu_memory_gb": spec.min_gpu_memory_gb,
            "max_retries": spec.max_retries, "submitted_by": event.submitted_by,
            "spec": _spec_encoder.encode(spec).decode(), "submitted_s": event.ts_s,
            **_state_columns(state),
        }
        for key, value in values.items():
            cols.setdefault(key, []).append(value)

    def _update_job_rows(self, con: duckdb.DuckDBPyConnection, states: list[JobState]) -> None:
        if not states:
            return
        if len(states) <= FEW_ROWS:
            # One parameterised UPDATE per job: about half the cost of UPDATE ... FROM an
            # Arrow table when a batch moves one or two jobs, which is the latency-critical case.
            # Only the columns that changed since the last commit (the row holds that state):
            # DuckDB updates column by column, and a list column costs a delete and an insert,
            # so "started" costs 1 ms instead of 3.
            for state in states:
                row = _state_columns(state)
                committed = self.view.states.get(state.job_id)
                if committed is not None:
                    before = _state_columns(committed)
                    row = {k: v for k, v in row.items() if before[k] != v}
                if row:
                    sets = ", ".join(f"{k} = ?" for k in row)
                    con.execute(f"UPDATE jobs SET {sets} WHERE job_id = ?", [*row.values(), state.job_id])
            return
        rows = [_state_columns(x) for x in states]
        columns = {"job_id": [x.job_id for x in states], **{k: [r[k] for r in rows] for k in rows[0]}}
        sets = ", ".join(f"{k} = arrow_rows.{k}" for k in rows[0])
        self.tables.run_with(con, self.tables.arrow("jobs", columns),
                             f"UPDATE jobs SET {sets} FROM arrow_rows WHERE jobs.job_id = arrow_rows.job_id")

    def _write_host_events(self, con: duckdb.DuckDBPyConnection, batch: PreparedBatch) -> None:
        latest = batch.heartbeats
        if not latest:
            return
        samples: dict[str, list] = {
            k: []
            for k in ("host", "gpu_index", "ts_s", "memory_used_mb", "utilization_pct", "temperature_c", "power_w",
                      "job_id", "attempt")
        }
        for beat in batch.beats:
            holders = {gpu: (j.job_id, j.attempt) for j in beat.jobs for gpu in j.gpu_ids}
            for g in beat.gpus:
                job_id, attempt = holders.get(g.index, (None, None))
                for key, value in (("host", beat.host), ("gpu_index", g.index), ("ts_s", beat.ts_s),
                                   ("memory_used_mb", g.memory_used_mb), ("utilization_pct", g.utilization_pct),
                                   ("temperature_c", g.temperature_c), ("power_w", g.power_w),
                                   ("job_id", job_id), ("attempt", attempt)):
                    samples[key].append(value)
        beats = list(latest.values())
        self.tables.replace_by_key(con, "hosts", ("host",), {
            "host": [b.host for b in beats], "last_seen_s": [b.ts_s for b in beats],
            "agent_started_s": [b.agent_started_s for b in beats],
            "heartbeat_interval_s": [b.interval_s for b in beats],
            "cpu_percent": [b.cpu_percent for b in beats],
            "memory_total_mb": [b.memory_total_mb for b in beats],
            "memory_used_mb": [b.memory_used_mb for b in beats],
            "disk_free_mb": [b.disk_free_mb for b in beats],
            "running_jobs": [b.running_jobs for b in beats],
            "gpu_count": [len(b.gpus) for b in beats], "gpu_note": [b.gpu_note for b in beats],
        })
        gpu_rows = [(b, g) for b in beats for g in b.gpus]
        con.execute(
            "DELETE FROM gpus WHERE host IN (SELECT unnest(?::VARCHAR[]))", [[b.host for b in beats]]
        )
        if gpu_rows:
            self.tables.insert(con, "gpus", {
                "host": [b.host for b, _ in gpu_rows], "gpu_index": [g.index for _, g in gpu_rows],
                "uuid": [g.uuid for _, g in gpu_rows], "name": [g.name for _, g in gpu_rows],
                "memory_total_mb": [g.memory_total_mb for _, g in gpu_rows],
                "memory_used_mb": [g.memory_used_mb for _, g in gpu_rows],
                "utilization_pct": [g.utilization_pct for _, g in gpu_rows],
                "temperature_c": [g.temperature_c for _, g in gpu_rows],
                "power_w": [g.power_w for _, g in gpu_rows],
                "pids": [g.pids for _, g in gpu_rows], "simulated": [g.simulated for _, g in gpu_rows],
                "ts_s": [b.ts_s for b, _ in gpu_rows],
            })
        self.tables.insert(con, "gpu_samples", samples)
