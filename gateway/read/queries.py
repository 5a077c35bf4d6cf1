"""Reads from the DuckDB projection. Each reader thread has its own cursor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import msgspec

from gateway import schemas as views
from gateway.read.metric_reads import MetricReads
from shared import events as ev
from shared.ids import job_rows

T = TypeVar("T")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_KINDS = ("train", "eval", "system")


def levels_from(min_level: str) -> tuple[str, ...]:
    """The levels a `level=` filter keeps: this one and every graver one."""
    return LEVELS[LEVELS.index(min_level):]


_JOB_COLUMNS = (
    "job_id, name, trainer, status, priority, gpus, attempt, host, gpu_ids, submitted_s, "
    "started_s, finished_s, exit_code, reason, description, submitted_by"
)


TEXT_PAGE_ROWS = 20_000  # lines per query of a streamed text log
MAX_WINDOWED_TAIL = 100_000  # a longer tail reads the plain way (a window's rows are fetched whole)


@dataclass(frozen=True)
class LogFilter:
    """Which log lines a request wants (GET .../logs and .../logs.txt)."""

    kind: str = "all"
    min_level: str | None = None
    attempt: int | None = None
    since_s: float | None = None
    after_seq: int | None = None
    q: str | None = None

    def where(self, job_id: str) -> tuple[str, list[Any]]:
        job, job_params = job_rows(job_id)
        where = [job]
        params: list[Any] = list(job_params)
        if self.kind != "all":
            where.append("kind = ?")
            params.append(self.kind)
        if self.min_level:
            where.append("list_contains(?::VARCHAR[], level)")  # a filter, not a semi-join
            params.append(list(levels_from(self.min_level)))
        if self.attempt is not None:
            where.append("attempt = ?")
            params.append(self.attempt)
        if self.since_s is not None:
            where.append("ts_s >= ?")
            params.append(self.since_s)
        if self.after_seq is not None:
            where.append("seq > ?")
            params.append(self.after_seq)
        if self.q:
            where.append("contains(text, ?)")
            params.append(self.q)
        return " AND ".join(where), params


class Reader(MetricReads):
    def __init__(self, con: duckdb.DuckDBPyConnection, threads: int = 2) -> None:
        self._con = con
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="reader")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
        return cur

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(self._cursor()))

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # ---- jobs ------------------------------------------------------------------------------
    async def job_exists(self, job_id: str) -> bool:
        rows = await self.run(lambda c: c.execute("SELECT 1 FROM jobs WHERE job_id = ?", [job_id]).fetchall())
        return bool(rows)

    async def list_jobs(self, *, status: list[str], trainer: str | None, host: str | None,
                        q: str | None, limit: int, offset: int, gpu_id: int | None = None,
                        priority: int | None = None, before_seq: int | None = None,
                        submitted_by: str | None = None, array: str | None = None) -> views.JobList:
        where: list[str] = ["TRUE"]
        params: list[Any] = []
        if array is not None:
            where.append("json_extract_string(spec, '$.array_id') = ?")
            params.append(array)
        if submitted_by is not None:
            where.append("submitted_by = ?")
            params.append(submitted_by)
        if before_seq is not None:  # cursor paging: stable while new jobs arrive
            where.append("submit_seq < ?")
            params.append(before_seq)
        if gpu_id is not None:
            where.append("(list_contains(gpu_ids, ?) OR list_contains(requested_gpu_ids, ?))")
            params += [gpu_id, gpu_id]
        if priority is not None:
            where.append("priority = ?")
            params.append(priority)
        if status:
            where.append("status IN (SELECT unnest(?::VARCHAR[]))")
            params.append(status)
        if trainer:
            where.append("trainer = ?")
            params.append(trainer)
        if host:
            where.append("host = ?")
            params.append(host)
        if q:
            where.append(
                "(contains(lower(name), lower(?)) OR contains(lower(description), lower(?))"
                " OR contains(job_id, lower(?)))"
            )
            params += [q, q, q]
        cond = " AND ".join(where)

        def fetch(c: duckdb.DuckDBPyConnection) -> views.JobList:
            total = c.execute(f"SELECT count(*) FROM jobs WHERE {cond}", params).fetchall()[0][0]
            rows = c.execute(
                f"SELECT {_JOB_COLUMNS}, submit_seq FROM jobs WHERE {cond} ORDER BY submit_seq DESC LIMIT ? OFFSET ?",
                [*params, limit + 1, offset],
            ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return views.JobList(jobs=[_summary(r) for r in rows], total=total, limit=limit, offset=offset,
                                 next_cursor=f"c{rows[-1][-1]}" if more and rows else None)

        return await self.run(fetch)

    async def job_detail_rows(self, job_id: str) -> dict[str, Any] | None:
        def fetch(c: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
            cur = c.execute("SELECT * FROM jobs WHERE job_id = ?", [job_id])
            row = cur.fetchone()
            if row is None:
                return None
            job = dict(zip([d[0] for d in cur.description], row, strict=True))
            job["history"] = [
                {"status_event": t, "attempt": a, "ts_s": ts}
                for t, a, ts in c.execute(
                    f"SELECT type, attempt, ts_s FROM job_events WHERE {job_rows(job_id)[0]} "
                    "AND applied AND type NOT IN ('progress', 'checkpoint', 'metrics') ORDER BY stream_seq",
                    list(job_rows(job_id)[1]),
                ).fetchall()
            ]
            job["exports"] = [
                {"export_id": e, "attempt": a, "status": st, "checkpoint": c, "path": p, "reason": r,
                 "requested_s": rq, "finished_s": f}
                for e, a, st, c, p, r, rq, f in c.execute(
                    "SELECT export_id, attempt, status, checkpoint, path, reason, requested_s, finished_s "
                    "FROM exports WHERE job_id = ? ORDER BY requested_s", [job_id]).fetchall()
            ]
            job["checkpoints"] = [
                {"attempt": a, "path": p, "step": s, "ts_s": ts}
                for a, p, s, ts in c.execute(
                    "SELECT attempt, path, step, ts_s FROM checkpoints WHERE job_id = ? ORDER BY ts_s",
                    [job_id],
                ).fetchall()
            ]
            return job

        return await self.run(fetch)

    async def progress(self, job_id: str) -> tuple[int, float, ev.Progress] | None:
        """The job's latest progress: (attempt, when, the reading)."""
        columns = ", ".join(ev.PROGRESS_NAMES)
        row = await self.run(lambda c: c.execute(
            f"SELECT attempt, ts_s, {columns} FROM progress WHERE job_id = ?", [job_id]).fetchone())
        if row is None:
            return None
        return row[0], row[1], ev.Progress(**dict(zip(ev.PROGRESS_NAMES, row[2:], strict=True)))

    async def latest_metrics(self, job_id: str, attempt: int) -> dict[str, float]:
        rows = await self.run(lambda c: c.execute(
            f"SELECT name, arg_max(value, seq) FROM metrics WHERE {job_rows(job_id)[0]} AND attempt = ? "
            "GROUP BY name",
            [*job_rows(job_id)[1], attempt]).fetchall())
        return {name: value for name, value in rows}

    async def progress_etas(self, job_ids: list[str]) -> dict[str, float]:
        """Remaining seconds of running jobs whose trainers report an ETA (as of that report)."""
        if not job_ids:
            return {}
        rows = await self.run(lambda c: c.execute(
            "SELECT job_id, eta_s - (epoch(now()) - ts_s) FROM progress "
            "WHERE job_id IN (SELECT unnest(?::VARCHAR[])) AND eta_s IS NOT NULL", [job_ids]).fetchall())
        return {job_id: max(0.0, float(left)) for job_id, left in rows}

    async def run_durations_by_trainer(self, last: int = 50) -> dict[str, list[float]]:
        """Run times of each trainer's last succeeded jobs: the basis of queue wait estimates."""
        rows = await self.run(lambda c: c.execute(
            "SELECT trainer, finished_s - started_s FROM ("
            "  SELECT trainer, started_s, finished_s, row_number() OVER "
            "    (PARTITION BY trainer ORDER BY finished_s DESC) AS n FROM jobs "
            "  WHERE status = 'succeeded' AND started_s IS NOT NULL AND finished_s IS NOT NULL"
            ") WHERE n <= ?", [last]).fetchall())
        out: dict[str, list[float]] = {}
        for trainer, seconds in rows:
            out.setdefault(trainer, []).append(float(seconds))
        return out

    async def job_gpus(self, job_id: str, *, attempt: int | None, points: int) -> list[views.JobGpuSeries]:
        """The job's GPUs over time (view job_gpu_samples), at most `points` per GPU and attempt."""
        cond = "job_id = ?"
        params: list[Any] = [job_id]
        if attempt is not None:
            cond += " AND attempt = ?"
            params.append(attempt)
        sql = (f"SELECT attempt, host, gpu_index, max(ts_s), avg(utilization_pct), avg(memory_used_mb)::BIGINT "
               f"FROM (SELECT *, ntile(?) OVER (PARTITION BY attempt, host, gpu_index ORDER BY ts_s) AS bucket "
               f"FROM job_gpu_samples WHERE {cond}) GROUP BY attempt, host, gpu_index, bucket "
               f"ORDER BY attempt, host, gpu_index, bucket")
        rows = await self.run(lambda c: c.execute(sql, [points, *params]).fetchall())
        series: dict[tuple[int, str, int], list[views.GpuSample]] = {}
        for at, host, gpu, ts, util, mem in rows:
            series.setdefault((at, host, gpu), []).append(
                views.GpuSample(ts_s=ts, utilization_pct=None if util is None else round(util, 1), memory_used_mb=mem))
        return [views.JobGpuSeries(attempt=at, host=host, gpu_index=gpu, samples=samples,
                                   mean_utilization_pct=_mean([s.utilization_pct for s in samples]))
                for (at, host, gpu), samples in series.items()]

    # ---- logs ------------------------------------------------------------------------------
    async def logs(self, job_id: str, chosen: LogFilter, *, tail: int | None, limit: int,
                   latest: tuple[int, int] | None = None) -> list[views.LogLine]:
        """A page of lines: the first `limit` that `chosen` keeps, or its last `tail`.
        `latest`: (the job's attempt, its last stored line), which lets a tail look at the end
        of the log first (see _tail_window)."""
        cond, params = chosen.where(job_id)
        if tail and latest and chosen.after_seq is None and chosen.since_s is None \
                and chosen.attempt in (None, latest[0]):
            found = await self._tail_window(cond, params, min(tail, limit), *latest)
            if found is not None:
                return found
        if tail:
            sql = (f"SELECT * FROM (SELECT seq, attempt, ts_s, stream, level, kind, text FROM logs "
                   f"WHERE {cond} ORDER BY attempt DESC, seq DESC LIMIT ?) ORDER BY attempt, seq")
            params.append(min(tail, limit))
        else:
            sql = (f"SELECT seq, attempt, ts_s, stream, level, kind, text FROM logs WHERE {cond} "
                   f"ORDER BY attempt, seq LIMIT ?")
            params.append(limit)
        rows = await self.run(lambda c: c.execute(sql, params).fetchall())
        return [views.LogLine(seq=r[0], attempt=r[1], ts_s=r[2], stream=r[3], level=r[4], kind=r[5], text=r[6])
                for r in rows]

    async def _tail_window(self, cond: str, params: list[Any], n: int, attempt: int,
                           last: int) -> list[views.LogLine] | None:
        """The last `n` lines (see _from_the_end), or None."""
        rows = await self._from_the_end(cond, params, n, attempt, last, "seq, attempt, ts_s, stream, level, kind, text")
        if rows is None:
            return None
        return [views.LogLine(seq=r[0], attempt=r[1], ts_s=r[2], stream=r[3], level=r[4], kind=r[5], text=r[6])
                for r in reversed(rows)]

    async def _from_the_end(self, cond: str, params: list[Any], n: int, attempt: int, last: int,
                            columns: str) -> list[tuple] | None:
        """`columns` of the attempt's last `n` lines that `cond` keeps, newest first, found in
        windows of its latest seqs growing 16x until they hold `n` (None once a window would
        hold the whole attempt, or `n` is huge: then the plain query). A tail then reads the end
        of a long log, not all of it: ORDER BY seq DESC LIMIT n alone reads every line of the
        job, which on a 10M-line table took 0.25 s, a window ~10 ms."""
        if n > MAX_WINDOWED_TAIL:
            return None
        window = max(64 * n, 4096)
        while last - window >= 0:
            sql = f"SELECT {columns} FROM logs WHERE {cond} AND attempt = ? AND seq > ? ORDER BY seq DESC LIMIT ?"
            args = [*params, attempt, last - window, n]
            rows = await self.run(lambda c: c.execute(sql, args).fetchall())  # noqa: B023 (awaited here)
            if len(rows) >= n:
                return rows
            window *= 16
        return None

    async def log_text(self, job_id: str, chosen: LogFilter, tail: int | None,
                       latest: tuple[int, int] | None = None) -> AsyncIterator[bytes]:
        """The log's text, a line each, in pages (constant memory however long the log): all of
        it, or its last `tail` lines (`latest` as for `logs`)."""
        cond, params = chosen.where(job_id)
        key = (-1, -1)  # (attempt, seq) of the last line sent
        found = None
        if tail and latest and chosen.attempt in (None, latest[0]):
            found = await self._from_the_end(cond, params, tail, *latest, "attempt, seq")
        if found:
            key = (found[-1][0], found[-1][1] - 1)
        elif tail:
            first = await self.run(lambda c: c.execute(
                f"SELECT attempt, seq FROM logs WHERE {cond} ORDER BY attempt DESC, seq DESC LIMIT 1 OFFSET ?",
                [*params, tail - 1]).fetchall())
            if first:
                key = (first[0][0], first[0][1] - 1)
        page = (f"SELECT attempt, seq, text FROM logs WHERE {cond} AND (attempt > ? OR (attempt = ? AND seq > ?)) "
                f"ORDER BY attempt, seq LIMIT {TEXT_PAGE_ROWS}")
        while True:
            args = [*params, key[0], key[0], key[1]]
            rows = await self.run(lambda c: c.execute(page, args).fetchall())  # noqa: B023 (awaited here)
            if not rows:
                return
            yield ("\n".join(r[2] for r in rows) + "\n").encode()
            key = (rows[-1][0], rows[-1][1])
            if len(rows) < TEXT_PAGE_ROWS:
                return

    # ---- events ----------------------------------------------------------------------------
    async def events(self, job_id: str, limit: int, after_seq: int | None) -> list[views.EventView]:
        cond, job_params = job_rows(job_id)
        params: list[Any] = list(job_params)
        if after_seq is not None:
            cond += " AND stream_seq > ?"
            params.append(after_seq)
        rows = await self.run(lambda c: c.execute(
            f"SELECT stream_seq, type, attempt, ts_s, applied, note, data FROM job_events WHERE {cond} "
            f"ORDER BY stream_seq LIMIT ?", [*params, limit]).fetchall())
        return [views.EventView(stream_seq=r[0], type=r[1], attempt=r[2], ts_s=r[3], applied=r[4],
                                note=r[5], data=msgspec.json.decode(r[6]) if r[6] else None) for r in rows]


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 1) if known else None


def _summary(r: tuple) -> views.JobSummary:
    return views.JobSummary(
        job_id=r[0], name=r[1] or "", trainer=r[2], status=r[3], priority=r[4], gpus=r[5],
        attempt=r[6], host=r[7], gpu_ids=list(r[8] or []), submitted_s=r[9], started_s=r[10],
        finished_s=r[11], exit_code=r[12], reason=r[13] or "", description=r[14] or "",
        submitted_by=r[15] or "",
    )
