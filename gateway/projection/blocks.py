"""Metric points rolled up at ingest into blocks of BLOCK_POINTS consecutive points of a series
(`metric_blocks`), so that a downsampled chart of a long series groups N/8 rows instead of N:
100k points to 1,000 took ~25 ms from the points, most of it DuckDB grouping 100k rows
(gateway/read/metric_reads.py reads the blocks).

Every point is in a block: the whole ones are written once, in the same transaction as the
points that complete them; a series' last, partial block (its loose points, fewer than
BLOCK_POINTS) is written again with each batch that adds to it. The loose points are kept in
memory here too, so a block is made from the batch at hand without reading the table back.
The blocks depend on the points and their order only, never on how they were batched: a
rebuild from the streams makes the same rows. What this process knows of a series is read from
the file the first time the job's points come after a start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.projection.arrow import Tables, floats
from gateway.projection.schema import METRIC_BLOCK_POINTS
from shared.ids import job_key

BLOCK_POINTS = METRIC_BLOCK_POINTS
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

    def __init__(self) -> None:
        self._series: dict[SeriesKey, Series] = {}
        self._known_jobs: set[str] = set()
        self._pending: dict[SeriesKey, Series] = {}

    def write(self, con: duckdb.DuckDBPyConnection, points: pa.Table) -> None:
        """Write the blocks that `points` (the rows about to go into `metrics`, in stream
        order) complete. Call it before the points themselves are inserted, in the same
        transaction: a job seen for the first time is read from the file as it was before them.
        Whole columns go through numpy and Arrow: no Python object per point or block."""
        for job_id in pc.unique(points.column("job_id")).to_pylist():
            if job_id not in self._known_jobs:
                self._load(con, job_id)
        jobs = pc.dictionary_encode(points.column("job_id").combine_chunks())
        names = pc.dictionary_encode(points.column("name").combine_chunks())
        attempts = points.column("attempt").to_numpy()
        # A code per series; a stable sort keeps each series' points in order.
        codes = ((jobs.indices.to_numpy(zero_copy_only=False).astype(np.int64) << 40)
                 | (attempts.astype(np.int64) << 20) | names.indices.to_numpy(zero_copy_only=False))
        order = np.argsort(codes, kind="stable")
        values = np.column_stack([floats(points.column(f)) for f in FIELDS])[order]
        codes = codes[order]
        starts = np.flatnonzero(np.concatenate(([True], np.diff(codes) != 0)))
        job_ids, metric_names = jobs.dictionary.to_pylist(), names.dictionary.to_pylist()
        made = _Rows()
        rewritten: dict[tuple[str, int], list[str]] = {}  # series whose partial block is replaced
        for lo, hi in zip(starts, [*starts[1:], len(codes)], strict=True):
            key = (job_ids[codes[lo] >> 40], int(attempts[order[lo]]), metric_names[codes[lo] & 0xFFFFF])
            now = self._pending.get(key) or self._series.get(key) or Series()
            if len(now.loose):
                rewritten.setdefault(key[:2], []).append(key[2])
            mine = np.concatenate([now.loose, values[lo:hi]])
            whole = len(mine) // BLOCK_POINTS
            made.add(key, now.blocks, mine[: whole * BLOCK_POINTS].reshape(whole, BLOCK_POINTS, len(FIELDS)))
            loose = mine[whole * BLOCK_POINTS:]
            made.add(key, now.blocks + whole, loose[np.newaxis] if len(loose) else loose.reshape(0, 0, len(FIELDS)))
            self._pending[key] = Series(now.blocks + whole, loose)
        for (job_id, attempt), some in rewritten.items():
            con.execute(f"DELETE FROM metric_blocks WHERE job_key = ? AND job_id = ? AND attempt = ? "
                        f"AND n < {BLOCK_POINTS} AND list_contains(?::VARCHAR[], name)",
                        [job_key(job_id), job_id, attempt, some])
        if made.count:
            columns = ", ".join(BLOCK_COLUMNS)
            Tables.run_with(con, made.table(),
                            f"INSERT INTO metric_blocks ({columns}) SELECT {columns} FROM arrow_rows")

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


class _Rows:
    """Block rows gathered as numpy arrays, a part per series."""

    def __init__(self) -> None:
        self.count = 0
        self._keys: list[SeriesKey] = []
        self._parts: list[tuple[int, int, int, np.ndarray]] = []  # key index, first block, points, blocks

    def add(self, key: SeriesKey, first: int, blocks: np.ndarray) -> None:
        """Blocks (shape: blocks x points x FIELDS) of `key`, numbered from `first`."""
        if not len(blocks):
            return
        if not self._keys or self._keys[-1] != key:
            self._keys.append(key)
        self._parts.append((len(self._keys) - 1, first, blocks.shape[1], blocks))
        self.count += len(blocks)

    def table(self) -> pa.Table:
        sizes = [len(b) for _, _, _, b in self._parts]
        which = np.repeat([k for k, _, _, _ in self._parts], sizes)
        seq_first, seq_last, step, epoch, value_sum, ts = ([] for _ in range(6))
        for _, _, _, b in self._parts:
            seq_first.append(b[:, 0, 0])
            seq_last.append(b[:, -1, 0])
            with np.errstate(invalid="ignore"):  # a block with no step or epoch at all: nan, then null
                step.append(np.fmax.reduce(b[:, :, 1], axis=1))
                epoch.append(np.fmax.reduce(b[:, :, 2], axis=1))
            value_sum.append(b[:, :, 3].sum(axis=1))
            ts.append(b[:, :, 4].max(axis=1))
        steps, epochs = np.concatenate(step), np.concatenate(epoch)
        keys = self._keys
        indices = pa.array(which.astype(np.int32))
        return pa.table({
            "job_id": pa.DictionaryArray.from_arrays(indices, pa.array([k[0] for k in keys], pa.string())),
            "job_key": pa.array(np.array([job_key(k[0]) for k in keys], np.int64)[which]),
            "attempt": pa.array(np.array([k[1] for k in keys], np.int32)[which]),
            "name": pa.DictionaryArray.from_arrays(indices, pa.array([k[2] for k in keys], pa.string())),
            "block": pa.array(np.concatenate([np.arange(f, f + len(b)) for _, f, _, b in self._parts])),
            "n": pa.array(np.repeat([n for _, _, n, _ in self._parts], sizes).astype(np.int32)),
            "value_sum": pa.array(np.concatenate(value_sum)),
            "step": pa.array(steps, mask=np.isnan(steps)).cast(pa.int64()),
            "epoch": pa.array(epochs, mask=np.isnan(epochs)),
            "ts_s": pa.array(np.concatenate(ts)),
            "first_seq": pa.array(np.concatenate(seq_first).astype(np.int64)),
            "last_seq": pa.array(np.concatenate(seq_last).astype(np.int64)),
        })
