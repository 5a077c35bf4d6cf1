"""Which metric points a request wants, as SQL over the `metrics` table and its blocks (the Reader runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.ids import job_rows

LeftOut = dict[str, int]  # per series, how many points a limit left out
# A series is downsampled from its blocks of 8 points when each bucket then spans this many
# blocks at least: a block goes whole to the bucket its first point falls in, so a bucket's
# edges move by up to 7 points (of 64 or more).
BLOCKS_PER_BUCKET = 8


@dataclass(frozen=True)
class MetricQuery:
    """Which metric points a request wants (GET .../metrics, seed 000's metrics)."""

    names: list[str]
    by: str = "step"  # step: every point; epoch: one per epoch, the mean of its points
    limit: int = 1000  # per series, its latest points
    step_min: int | None = None
    step_max: int | None = None
    downsample: int | None = None  # at most so many points per series, each a bucket's mean
    attempt: int | None = None  # None: every attempt's series in turn
    fields: tuple[str, ...] = ("attempt", "step", "epoch", "value", "ts_s")  # of a columns answer

    def points(self, job_id: str) -> tuple[str, list[Any]]:
        """A query of the points asked for: (name, attempt, step, epoch, value, ts_s, k: the
        order within a series), before any limit."""
        cond, params = self._where(job_id)
        if self.by == "epoch":
            # One point per epoch: the mean of its points. A series that never passes epoch 1
            # (fractional epochs, e.g. a Trainer's 0.01, 0.02, ...) keeps its own epochs instead
            # of collapsing into one point at 0.
            sql = (f"SELECT name, attempt, NULL::BIGINT AS step, e AS epoch, avg(value) AS value, "
                   f"max(ts_s) AS ts_s, e AS k FROM ("
                   f"SELECT *, CASE WHEN max(epoch) OVER (PARTITION BY name, attempt) >= 1 THEN floor(epoch) "
                   f"ELSE round(epoch, 4) END AS e FROM metrics WHERE {cond} AND epoch IS NOT NULL) "
                   f"GROUP BY name, attempt, e")
        else:
            sql = f"SELECT name, attempt, step, epoch, value, ts_s, seq AS k FROM metrics WHERE {cond}"
        if self.downsample:
            return self._bucketed(f"WITH p AS ({sql}) ", params)
        return sql, params

    def _where(self, job_id: str) -> tuple[str, list[Any]]:
        job, job_params = job_rows(job_id)
        where = [job]
        params: list[Any] = list(job_params)
        if len(self.names) == 1:
            where.append("name = ?")  # ~0.3 ms less a scan of 12.5k rows than list_contains
            params.append(self.names[0])
        elif self.names:
            where.append("list_contains(?::VARCHAR[], name)")  # not IN (unnest): no semi-join, 4 ms less a scan
            params.append(self.names)
        if self.attempt is not None:
            where.append("attempt = ?")
            params.append(self.attempt)
        if self.step_min is not None:
            where.append("step >= ?")
            params.append(self.step_min)
        if self.step_max is not None:
            where.append("step <= ?")
            params.append(self.step_max)
        return " AND ".join(where), params

    @property
    def from_blocks(self) -> bool:
        """Downsampled from the blocks of 8 points (projection/blocks.py) and bucketed in
        numpy (read/downsample.py), not in SQL: only by step and over the whole series (a step
        range may cut a block)."""
        return bool(self.downsample) and self.by == "step" and self.step_min is None and self.step_max is None

    def block_rows(self, job_id: str, series: list[tuple[int, str]] | None, blocks: bool) -> tuple[str, list[Any]]:
        """For `from_blocks`: the blocks of `series` (None: of every series asked for) if
        `blocks`, else their points as blocks of one; as (attempt, k: the order, n, v: the sum
        of values, step, epoch, ts_s: the latest, and the name: none for one name asked for,
        `s` its index among several, `name` for every series; downsample.BlockRows.fetch), in
        no particular order."""
        cond, params = self._where(job_id)
        if series is not None:
            cond += " AND list_contains(?::VARCHAR[], attempt::VARCHAR || '/' || name)"
            params.append([f"{attempt}/{name}" for attempt, name in series])
        name = "name, "  # as strings only for every series: a name per row costs ~1 ms per 10k
        if len(self.names) == 1:
            name = ""
        elif self.names:
            name = "list_position(?::VARCHAR[], name) - 1 AS s, "
            params.insert(0, self.names)
        if blocks:
            return (f"SELECT {name}attempt, first_seq AS k, n, value_sum AS v, step, epoch, ts_s FROM metric_blocks "
                    f"WHERE {cond}", params)
        return (f"SELECT {name}attempt, seq AS k, 1 AS n, value AS v, step, epoch, ts_s FROM metrics WHERE {cond}",
                params)

    def _bucketed(self, with_p: str, params: list[Any]) -> tuple[str, list[Any]]:
        """Equal-width buckets over each series' span of its order key (its arrival, or its
        epochs) in `p`, each the mean of its points: a scan and a grouping, no sort."""
        sql = (f"{with_p}, r AS (SELECT name, attempt, min(k) AS lo, max(k) AS hi FROM p GROUP BY ALL) "
               f"SELECT name, attempt, max(step) AS step, max(epoch) AS epoch, avg(value) AS value, "
               f"max(ts_s) AS ts_s, min(k) AS k FROM p JOIN r USING (name, attempt) GROUP BY name, attempt, "
               f"CASE WHEN hi = lo THEN 0 ELSE least(floor((k - lo) * ? / (hi - lo)), ? - 1) END")
        return sql, [*params, self.downsample, self.downsample]

    def sql(self, job_id: str) -> tuple[str, list[Any]]:
        """`points` with each series cut to its latest `limit` points; `total`: its points
        before the cut."""
        sql, params = self.points(job_id)
        sql = (f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY attempt DESC, k DESC) AS rn, "
               f"count(*) OVER (PARTITION BY name) AS total FROM ({sql})) WHERE rn <= ?")
        return sql, [*params, self.limit]
