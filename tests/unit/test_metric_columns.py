"""Metric columns encoded from Arrow (gateway/read/columns.py): order, limits, nan and nulls."""

from __future__ import annotations

import json
import math

import pyarrow as pa

from gateway.read.columns import series_columns, single_series_columns


def _decoded(found: list[tuple[str, int, dict[str, bytes]]]) -> dict[str, tuple[int, dict[str, list]]]:
    return {name: (total, {f: json.loads(v) for f, v in arrays.items()}) for name, total, arrays in found}


def test_one_series_out_of_order_comes_sorted_by_attempt_then_order() -> None:
    table = pa.table({"_a": pa.array([2, 1, 2, 1], pa.int32()), "_k": pa.array([10, 5, 9, 6], pa.int64()),
                      "step": pa.array([2, 1, 1, 2], pa.int64()), "value": [0.2, 1.0, 0.4, 0.5]})
    got = _decoded(single_series_columns("loss", table, ["step", "value"], limit=10))
    assert got == {"loss": (4, {"step": [1, 2, 1, 2], "value": [1.0, 0.5, 0.4, 0.2]})}
    latest = _decoded(single_series_columns("loss", table, ["step"], limit=2))
    assert latest == {"loss": (4, {"step": [1, 2]})}  # the latest two: attempt 2's


def test_nan_and_inf_are_null_and_a_column_of_nulls_stays_null() -> None:
    table = pa.table({"name": ["a", "a", "b"], "epoch": pa.nulls(3, pa.float64()),
                      "value": [math.nan, math.inf, 1.5], "step": pa.array([1, None, 3], pa.int64())})
    got = _decoded(series_columns(table, ["epoch", "value", "step"], limit=10))
    assert got == {"a": (2, {"epoch": [None, None], "value": [None, None], "step": [1, None]}),
                   "b": (1, {"epoch": [None], "value": [1.5], "step": [3]})}
