"""Bulk writes into the projection through Arrow, typed from the DuckDB schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.projection.schema import PROJECTED_TABLES
from shared import events as ev
from shared.ids import job_key

# Up to this many rows an INSERT binds them as parameters: ~1 ms for one row against ~3 ms for
# building and scanning an Arrow table (which wins from about a dozen rows on). The first line of
# a job, and most lifecycle events, are batches of one.
SMALL_BATCH_ROWS = 8
# Shorter runs than this, on average, are built from a list instead (Tables.runs).
RUN_MIN_ROWS = 32
LOG_COLUMNS = ("job_id", "job_key", "attempt", "seq", "ts_s", "stream", "level", "kind", "text")
METRIC_COLUMNS = ("job_id", "job_key", "attempt", "seq", "step", "epoch", "name", "value", "ts_s")


class Tables:
    """Bulk writes through Arrow, typed from the DuckDB schema. Typing the arrays up front
    matters for small batches: inferring the types of eight 1-row columns costs ~1 ms (each
    untyped `pa.array` of a Python list tries to import dateutil, absent here: 0.15 ms)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._types = {
            table: {f.name: f.type for f in con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema}
            for table in PROJECTED_TABLES
        }

    def arrow(self, table: str, columns: dict[str, list | pa.Array]) -> pa.Table:
        types = self._types[table]
        return pa.Table.from_arrays(
            [v if isinstance(v, pa.Array) else pa.array(v, type=types[k]) for k, v in columns.items()],
            names=list(columns),
        )

    def runs(self, table: str, column: str, runs: Sequence[tuple[Any, int]]) -> pa.Array:
        """A column given as runs of (value, count), repeated in C. Runs of a few rows each
        (stdout and stderr interleaved line by line) are cheaper as a list."""
        kind = self._types[table][column]
        if len(runs) == 1:
            return pa.repeat(pa.scalar(runs[0][0], kind), runs[0][1])
        if len(runs) * RUN_MIN_ROWS > sum(n for _, n in runs):
            return pa.array(ev.expand(runs), kind)
        return pa.concat_arrays([pa.repeat(pa.scalar(value, kind), n) for value, n in runs])

    def metric_rows(self, batches: Sequence[ev.MetricsRecorded]) -> pa.Table:
        """The points of metric batches as one Arrow table, a chunk per batch. A batch's job,
        key and attempt are repeated in C (building 100k copies of a job id from a Python list
        took 40 ms per 100k points, more than the rest of the insert)."""
        types = self._types["metrics"]
        chunks: dict[str, list[pa.Array]] = {name: [] for name in METRIC_COLUMNS}
        for b in batches:
            n = len(b.name)
            for name, value in (("job_id", b.job_id), ("job_key", job_key(b.job_id)), ("attempt", b.attempt)):
                chunks[name].append(pa.repeat(pa.scalar(value, types[name]), n))
            chunks["seq"].append(sequence(b.first_seq, n))
            for name, values in (("step", b.step), ("epoch", b.epoch), ("name", b.name), ("value", b.values()),
                                 ("ts_s", b.point_ts_s)):
                chunks[name].append(pa.array(values, types[name]))
        return pa.Table.from_arrays([pa.chunked_array(chunks[name], types[name]) for name in METRIC_COLUMNS],
                                    names=list(METRIC_COLUMNS))

    @staticmethod
    def run_with(con: duckdb.DuckDBPyConnection, rows: pa.Table, *statements: str) -> None:
        """Run statements that read `arrow_rows`, registered explicitly on this cursor: DuckDB's
        implicit scan of Python variables is off, with all external access (DESIGN §10)."""
        con.register("arrow_rows", rows)
        try:
            for sql in statements:
                con.execute(sql)
        finally:
            con.unregister("arrow_rows")

    @staticmethod
    def _values(con: duckdb.DuckDBPyConnection, statement: str, columns: dict[str, list], n: int) -> None:
        """`statement` ending in VALUES, with the rows bound as parameters."""
        row = "(" + ", ".join("?" * len(columns)) + ")"
        params = [col[i] for i in range(n) for col in columns.values()]
        con.execute(f"{statement} {', '.join([row] * n)}", params)

    def insert(self, con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, list]) -> None:
        n = len(next(iter(columns.values()))) if columns else 0
        if not n:
            return
        names = ", ".join(columns)
        if n <= SMALL_BATCH_ROWS and not any(isinstance(v, pa.Array) for v in columns.values()):
            self._values(con, f"INSERT INTO {table} ({names}) VALUES", columns, n)
            return
        self.run_with(con, self.arrow(table, columns), f"INSERT INTO {table} ({names}) SELECT {names} FROM arrow_rows")

    def replace_by_key(self, con: duckdb.DuckDBPyConnection, table: str, keys: tuple[str, ...],
                       columns: dict[str, list]) -> None:
        """Upsert for tables with one row per key: delete the keys, insert the new rows."""
        if not len(next(iter(columns.values()))):
            return
        match = " AND ".join(f"{table}.{k} = arrow_rows.{k}" for k in keys)
        names = ", ".join(columns)
        self.run_with(con, self.arrow(table, columns),
                      f"DELETE FROM {table} WHERE EXISTS (SELECT 1 FROM arrow_rows WHERE {match})",
                      f"INSERT INTO {table} ({names}) SELECT {names} FROM arrow_rows")


def sequence(first: int, n: int) -> pa.Array:
    """first, first + 1, ... (n values) as BIGINT, made in numpy: from a Python range, Arrow
    takes each number as an object (2 ms per 10k rows, half of building a batch's columns)."""
    return pa.array(np.arange(first, first + n, dtype=np.int64))


def floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 numpy, a null as nan (the blocks, and their buckets)."""
    return pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy()
