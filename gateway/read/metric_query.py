"""Which metric points a request wants, as SQL over the `metrics` table (the Reader runs it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.ids import job_key

LeftOut = dict[str, int]  # per series, how many points a limit left out


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
        where = ["job_key = ?", "job_id = ?"]
        params: list[Any] = [job_key(job_id), job_id]
        if self.names:
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
        cond = " AND ".join(where)
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
            # Equal-width buckets over each series' span of its order key (its arrival, or its
            # epochs), each the mean of its points: a scan and a grouping, no sort of the points.
            sql = (f"WITH b AS ({sql}), r AS (SELECT name, attempt, min(k) AS lo, max(k) AS hi FROM b GROUP BY ALL) "
                   f"SELECT name, attempt, max(step) AS step, max(epoch) AS epoch, avg(value) AS value, "
                   f"max(ts_s) AS ts_s, min(k) AS k FROM b JOIN r USING (name, attempt) GROUP BY name, attempt, "
                   f"CASE WHEN hi = lo THEN 0 ELSE least(floor((k - lo) * ? / (hi - lo)), ? - 1) END")
            params = [*params, self.downsample, self.downsample]
        return sql, params

    def sql(self, job_id: str) -> tuple[str, list[Any]]:
        """`points` with each series cut to its latest `limit` points; `total`: its points
        before the cut."""
        sql, params = self.points(job_id)
        sql = (f"SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY attempt DESC, k DESC) AS rn, "
               f"count(*) OVER (PARTITION BY name) AS total FROM ({sql})) WHERE rn <= ?")
        return sql, [*params, self.limit]
