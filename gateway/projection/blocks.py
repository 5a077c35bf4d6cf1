"""Metric points rolled up at ingest into blocks of BLOCK_POINTS consecutive points of a series
(`metric_blocks`), so that a downsampled chart of a long series groups N/8 rows instead of N:
100k points to 1,000 took ~25 ms from the points, most of it DuckDB grouping 100k rows
(gateway/read/metric_query.py reads the blocks).

Every point is in a block: the whole ones are written once, in the same transaction as the
points that complete them; a series' last, partial block (its loose points, fewer than
BLOCK_POINTS) is written again with each batch that adds to it. The loose points are kept in
memory here too, so a block is made from the batch at hand without reading the table back.
The blocks depend on the points and their order only, never on how they were batched: a
rebuild from the streams makes the same rows. What this process knows of a series is read from
the file the first time the job's points come after a start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.projection.arrow import Tables
from shared import events as ev
from shared.ids import job_key

BLOCK_POINTS = 8
BLOCK_COLUMNS = ("job_id", "job_key", "attempt", "name", "block", "n", "value_sum", "step", "epoch", "ts_s",
                 "first_seq", "last_seq")
# A point's fields as the loose points keep them: None (no step, no epoch) as nan.
FIELDS = ("seq", "step", "epoch", "value", "ts_s")

SeriesKey = tuple[str, int, str]  # job id, attempt, metric name


@dataclass
class Series:
    blocks: int = 0  # whole blocks written
    loose: np.ndarray = field(default_factory=lambda: np.empty((0, len(FIELDS))))  # a row per loose point


class MetricBlocks:
    """The blocks' writer: `write` on the job stream's writer thread, inside the transaction
    that inserts the points; `committed` or `abandoned` after it."""

    def __init__(self, tables: Tables) -> None:
        self._tables = tables
        self._series: dict[SeriesKey, Series] = {}
        self._known_jobs: set[str] = set()
        self._pending: dict[SeriesKey, Series] = {}

    def write(self, con: duckdb.DuckDBPyConnection, batches: Sequence[ev.MetricsRecorded]) -> None:
        """Write the blocks that the batches' points complete. Call it before the points
        themselves are inserted, in the same transaction (a job seen for the first time is
        read from the file as it was before them)."""
        rows: dict[str, list] = {name: [] for name in BLOCK_COLUMNS}
        touched: set[SeriesKey] = set()
        for b in batches:
            if b.job_id not in self._known_jobs:
                self._load(con, b.job_id)
            touched.update(self._add(b, rows))
        # The partial blocks of the series these points went to, as they are now.
        names: dict[tuple[str, int], list[str]] = {}
        for job_id, attempt, name in touched:
            names.setdefault((job_id, attempt), []).append(name)
            series = self._pending[(job_id, attempt, name)]
            if len(series.loose):
                self._blocks((job_id, attempt, name), series.blocks, series.loose[np.newaxis], rows)
        for (job_id, attempt), some in names.items():
            con.execute(f"DELETE FROM metric_blocks WHERE job_key = ? AND job_id = ? AND attempt = ? "
                        f"AND n < {BLOCK_POINTS} AND list_contains(?::VARCHAR[], name)",
                        [job_key(job_id), job_id, attempt, some])
        if rows["block"]:
            self._tables.insert(con, "metric_blocks", rows)

    def _add(self, b: ev.MetricsRecorded, rows: dict[str, list]) -> list[SeriesKey]:
        """Rows for the whole blocks `b` completes; the series it added to."""
        n = len(b.name)
        if not n:
            return []
        points = np.column_stack([
            np.arange(b.first_seq, b.first_seq + n, dtype=np.float64),
            np.array(b.step, dtype=np.float64),  # None -> nan
            np.array(b.epoch, dtype=np.float64),
            np.array(b.values(), dtype=np.float64),
            np.array(b.point_ts_s, dtype=np.float64),
        ])
        names = pc.dictionary_encode(pa.array(b.name, pa.string()))
        codes = names.indices.to_numpy(zero_copy_only=False)
        keys = [(b.job_id, b.attempt, name) for name in names.dictionary.to_pylist()]
        for code, key in enumerate(keys):
            now = self._pending.get(key) or self._series.get(key) or Series()
            mine = np.concatenate([now.loose, points[codes == code]])
            whole = len(mine) // BLOCK_POINTS
            if whole:
                self._blocks(key, now.blocks, mine[: whole * BLOCK_POINTS].reshape(whole, BLOCK_POINTS, len(FIELDS)),
                             rows)
            self._pending[key] = Series(now.blocks + whole, mine[whole * BLOCK_POINTS:])
        return keys

    @staticmethod
    def _blocks(key: SeriesKey, first: int, blocks: np.ndarray, rows: dict[str, list]) -> None:
        """Rows for blocks (shape: blocks x points x FIELDS) of series `key`, numbered from
        `first`: whole ones, or one partial block."""
        job_id, attempt, name = key
        count, points = blocks.shape[:2]
        seq, step, epoch, value, ts = (blocks[:, :, i] for i in range(len(FIELDS)))
        with np.errstate(invalid="ignore"):  # a block with no step or epoch at all: nan, then None
            steps, epochs = np.fmax.reduce(step, axis=1), np.fmax.reduce(epoch, axis=1)
        columns = {
            "job_id": [job_id] * count, "job_key": [job_key(job_id)] * count, "attempt": [attempt] * count,
            "name": [name] * count, "block": list(range(first, first + count)), "n": [points] * count,
            "value_sum": value.sum(axis=1).tolist(),
            "step": [None if np.isnan(s) else int(s) for s in steps],
            "epoch": [None if np.isnan(e) else float(e) for e in epochs],
            "ts_s": ts.max(axis=1).tolist(),
            "first_seq": seq[:, 0].astype(np.int64).tolist(), "last_seq": seq[:, -1].astype(np.int64).tolist(),
        }
        for column, values in columns.items():
            rows[column].extend(values)

    def _load(self, con: duckdb.DuckDBPyConnection, job_id: str) -> None:
        """The job's series as the file holds them: their blocks, and their loose points."""
        key_params = [job_key(job_id), job_id]
        blocks = {(attempt, name): (count, last) for attempt, name, count, last in con.execute(
            f"SELECT attempt, name, count(*), max(last_seq) FROM metric_blocks WHERE job_key = ? AND job_id = ? "
            f"AND n = {BLOCK_POINTS} GROUP BY ALL", key_params).fetchall()}
        loose = con.execute(
            f"SELECT m.attempt, m.name, m.seq, m.step, m.epoch, m.value, m.ts_s FROM metrics m "
            f"LEFT JOIN (SELECT attempt, name, max(last_seq) AS last_seq FROM metric_blocks "
            f"  WHERE job_key = ? AND job_id = ? AND n = {BLOCK_POINTS} GROUP BY ALL) b USING (attempt, name) "
            f"WHERE m.job_key = ? AND m.job_id = ? AND m.seq > coalesce(b.last_seq, -1) ORDER BY m.seq",
            key_params * 2).fetchall()
        found: dict[tuple[int, str], list[tuple[float, ...]]] = {}
        for attempt, name, *point in loose:
            found.setdefault((attempt, name), []).append(tuple(np.nan if v is None else float(v) for v in point))
        for attempt_name in blocks.keys() | found.keys():
            points = np.array(found.get(attempt_name, []), dtype=np.float64).reshape(-1, len(FIELDS))
            self._series[(job_id, *attempt_name)] = Series(blocks.get(attempt_name, (0, -1))[0], points)
        self._known_jobs.add(job_id)

    def forget(self, job_id: str) -> None:
        """A deleted job: its rows are gone."""
        self._known_jobs.discard(job_id)
        for known in (self._series, self._pending):
            for key in [k for k in known if k[0] == job_id]:
                del known[key]

    def committed(self) -> None:
        self._series.update(self._pending)
        self._pending.clear()

    def abandoned(self) -> None:
        """The transaction rolled back: what it would have written is not there."""
        self._pending.clear()
