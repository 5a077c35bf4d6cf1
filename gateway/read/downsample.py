"""Downsampling a series from its blocks (MetricQuery.block_rows) in numpy: the rows come
sorted by series and order, so each bucket is a run of consecutive rows and its mean, latest
step and time are one `reduceat` each. DuckDB's grouping cost ~3 ms however few the rows.

The buckets are those of the SQL path (MetricQuery._bucketed): equal-width over each series'
span of its order key, the last one closed; a block goes whole to the bucket of its first point."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.projection.arrow import floats


def bucket_means(rows: pa.Table, buckets: int) -> pa.Table:
    """`rows` (name, attempt, k, n, v: the sum of n values, step, epoch, ts_s; in any order)
    -> one row per non-empty bucket: name, attempt, step, epoch, value, ts_s, k, sorted by
    name, attempt, k."""
    count = rows.num_rows
    if not count:
        return pa.table({"name": pa.array([], pa.string()), "attempt": pa.array([], pa.int32()),
                         "step": pa.array([], pa.int64()), "epoch": pa.array([], pa.float64()),
                         "value": pa.array([], pa.float64()), "ts_s": pa.array([], pa.float64()),
                         "k": pa.array([], pa.int64())})
    names = pc.dictionary_encode(rows.column("name").combine_chunks())
    codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    attempts = rows.column("attempt").to_numpy().astype(np.int64)
    k = rows.column("k").to_numpy().astype(np.float64)
    same_series = (codes[1:] == codes[:-1]) & (attempts[1:] == attempts[:-1])
    if not bool(np.all(same_series & (k[1:] >= k[:-1]))):
        # Not one series in order (one series' blocks come in order: they are written in
        # order, its last, partial block last): sorted by name, attempt, k.
        order = np.lexsort((k, attempts, pc.rank(names.dictionary).to_numpy()[codes]))
        rows, codes, attempts, k = rows.take(pa.array(order)), codes[order], attempts[order], k[order]
    # Series: runs of one (name, attempt); each row learns its series' first and last k.
    starts = np.flatnonzero(np.concatenate(([True], (np.diff(codes) != 0) | (np.diff(attempts) != 0))))
    lengths = np.diff(np.append(starts, count))
    lo = np.repeat(k[starts], lengths)
    hi = np.repeat(k[starts + lengths - 1], lengths)
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        bucket = np.where(span > 0, np.minimum(np.floor((k - lo) * buckets / span), buckets - 1), 0)
    series = np.repeat(np.arange(len(starts)), lengths)
    key = series * buckets + bucket.astype(np.int64)  # non-decreasing: rows sorted by series, k
    first = np.flatnonzero(np.concatenate(([True], np.diff(key) != 0)))
    sums = np.add.reduceat(rows.column("v").to_numpy().astype(np.float64), first)
    points = np.add.reduceat(rows.column("n").to_numpy().astype(np.float64), first)
    with np.errstate(invalid="ignore"):  # a bucket without steps or epochs: nan, then null
        step = np.fmax.reduceat(floats(rows.column("step")), first)
        epoch = np.fmax.reduceat(floats(rows.column("epoch")), first)
    ts = np.fmax.reduceat(floats(rows.column("ts_s")), first)
    return pa.table({
        "name": names.dictionary.take(pa.array(codes[first])),
        "attempt": pa.array(attempts[first].astype(np.int32)),
        "step": pa.array(step, mask=np.isnan(step)).cast(pa.int64()),
        "epoch": pa.array(epoch, mask=np.isnan(epoch)),
        "value": pa.array(sums / points),
        "ts_s": pa.array(ts),
        "k": pa.array(k[first].astype(np.int64)),
    })

