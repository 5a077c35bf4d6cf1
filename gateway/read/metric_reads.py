"""The Reader's metric reads: points or columns, whole or downsampled."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
import msgspec
import numpy as np
import pyarrow as pa

from gateway import schemas as views
from gateway.read.columns import series_columns, single_series_columns
from gateway.read.downsample import BlockRows, bucket_means
from gateway.read.metric_query import BLOCKS_PER_BUCKET, LeftOut, MetricQuery

T = TypeVar("T")


class MetricReads:
    """Part of the Reader (queries.py), which provides `run`."""

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Call `fn` with a cursor on a reader thread."""
        raise NotImplementedError

    async def _from_blocks(self, job_id: str, query: MetricQuery) -> pa.Table:
        """The downsampled points of `query.from_blocks`, sorted by name, attempt, k. A series
        with enough blocks for every bucket is read from them (projection/blocks.py), another
        from its points: the blocks of every series asked for come first, and only those too
        short are read again, from their points (each series whole from one statement)."""
        buckets = query.downsample or 1

        def rows(c: duckdb.DuckDBPyConnection, series: list[tuple[int, str]] | None, blocks: bool) -> BlockRows:
            return BlockRows.fetch(c, *query.block_rows(job_id, series, blocks), query.names).in_order()

        def fetch(c: duckdb.DuckDBPyConnection) -> pa.Table:
            blocks = rows(c, None, True)
            starts, lengths = blocks.series()
            short = lengths < BLOCKS_PER_BUCKET * buckets
            if not short.any():
                return bucket_means(blocks, buckets)
            points = rows(c, [(int(blocks.attempt[i]), blocks.names[blocks.code[i]]) for i in starts[short]], False)
            if short.all():
                return bucket_means(points, buckets)
            return bucket_means(blocks.take(~np.repeat(short, lengths)).plus(points).in_order(), buckets)

        return await self.run(fetch)

    async def metrics(self, job_id: str, query: MetricQuery) -> tuple[dict[str, list[views.MetricPoint]], LeftOut]:
        """Each series' latest `query.limit` points, as points; and per series how many points
        the limit left out (only those it cut)."""
        rows: list[tuple[Any, ...]]
        if query.from_blocks:
            table = await self._from_blocks(job_id, query)
            cols = [table.column(f).to_pylist() for f in ("name", "attempt", "step", "epoch", "value", "ts_s")]
            names = cols[0]
            totals_of = collections.Counter(names)
            rows = []
            seen: dict[str, int] = {}
            for i in range(len(names) - 1, -1, -1):  # the latest `limit` of each name
                if seen.get(names[i], 0) < query.limit:
                    seen[names[i]] = seen.get(names[i], 0) + 1
                    rows.append((*(c[i] for c in cols), totals_of[names[i]]))
            rows.reverse()
        else:
            sql, params = query.sql(job_id)
            rows = await self.run(lambda c: c.execute(
                f"SELECT name, attempt, step, epoch, value, ts_s, total FROM ({sql}) ORDER BY name, attempt, k",
                params).fetchall())
        series: dict[str, list[views.MetricPoint]] = {}
        totals: dict[str, int] = {}
        for name, at, step, epoch, value, ts, total in rows:
            series.setdefault(name, []).append(
                views.MetricPoint(attempt=at, step=step, epoch=epoch, value=value, ts_s=ts))
            totals[name] = total
        return series, {name: totals[name] - len(points) for name, points in series.items()
                        if totals[name] > len(points)}

    async def metric_columns(self, job_id: str, query: MetricQuery) -> tuple[dict[str, views.MetricColumns], LeftOut]:
        """The same as columns: one JSON array per field (gateway/read/columns.py), no Python
        object per point."""
        wanted = [f for f in views.METRIC_FIELDS if f in query.fields]
        if query.from_blocks:
            found = series_columns(await self._from_blocks(job_id, query), wanted, query.limit)
            return self._columns(found, query.limit)
        sql, params = query.points(job_id)

        def fetch(c: duckdb.DuckDBPyConnection) -> list[tuple[str, int, dict[str, bytes]]]:
            # sql(), not execute(): its Arrow result is not copied once more
            if len(query.names) == 1:
                # One series (a chart's request): no name per row, and no sort when the points
                # come in order, as they are stored (the fetch takes half the time).
                table = c.sql(f"SELECT attempt AS _a, k AS _k, {', '.join(wanted)} FROM ({sql})",
                              params=params).to_arrow_table()
                return single_series_columns(query.names[0], table, wanted, query.limit)
            table = c.sql(f"SELECT name, {', '.join(wanted)} FROM ({sql}) ORDER BY name, attempt, k",
                          params=params).to_arrow_table()
            return series_columns(table, wanted, query.limit)

        return self._columns(await self.run(fetch), query.limit)

    @staticmethod
    def _columns(found: list[tuple[str, int, dict[str, bytes]]],
                 limit: int) -> tuple[dict[str, views.MetricColumns], LeftOut]:
        series = {name: views.MetricColumns(**{f: msgspec.Raw(v) for f, v in arrays.items()})
                  for name, _total, arrays in found}
        return series, {name: total - limit for name, total, _ in found if total > limit}

