"""Metric points rolled up into blocks of 8 at ingest (gateway/projection/blocks.py): the
blocks are those of the points and their order (the last one partial), however the points came
in batches, across a rolled-back write and a restart; a downsampled series reads them and
answers as from its points."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from pathlib import Path

import duckdb

from gateway.projection.arrow import METRIC_COLUMNS, Tables
from gateway.projection.blocks import BLOCK_POINTS, MetricBlocks
from gateway.projection.schema import SCHEMA_VERSION, open_db
from gateway.read.metric_query import BLOCKS_PER_BUCKET, MetricQuery
from gateway.read.queries import Reader
from shared import events as ev

JOB = "job_20261201_000000_aaaaaa"


def batch(first_seq: int, names: list[str], attempt: int = 1) -> ev.MetricsRecorded:
    n = len(names)
    seqs = range(first_seq, first_seq + n)
    return ev.MetricsRecorded.of_points(
        job_id=JOB, attempt=attempt, ts_s=1.0, first_seq=first_seq, step=[s // 2 for s in seqs],
        epoch=[None] * n, name=names, value=[float(s % 13) for s in seqs], point_ts_s=[1e9 + s for s in seqs])


def put(con: duckdb.DuckDBPyConnection, blocks: MetricBlocks, batches: list[ev.MetricsRecorded],
        commit: bool = True) -> None:
    """As the projector's writer does (writers.py, _write_metrics), in one transaction."""
    con.execute("BEGIN TRANSACTION")
    tables = Tables(con)
    rows = tables.metric_rows(batches)
    blocks.write(con, rows)
    tables.run_with(con, rows, f"INSERT INTO metrics ({', '.join(METRIC_COLUMNS)}) SELECT * FROM arrow_rows")
    if commit:
        con.execute("COMMIT")
        blocks.committed()
    else:
        con.execute("ROLLBACK")
        blocks.abandoned()


EXPECTED = f"""
    SELECT job_id, attempt, name, o // {BLOCK_POINTS} AS block, count(*) AS n, sum(value), max(step), max(epoch),
           max(ts_s), min(seq), max(seq)
    FROM (SELECT *, row_number() OVER (PARTITION BY job_id, attempt, name ORDER BY seq) - 1 AS o FROM metrics)
    GROUP BY ALL ORDER BY ALL"""
WRITTEN = ("SELECT job_id, attempt, name, block, n, value_sum, step, epoch, ts_s, first_seq, last_seq "
           "FROM metric_blocks ORDER BY ALL")


def test_blocks_are_the_points_in_eights_however_they_came(tmp_path: Path) -> None:
    rng = random.Random(7)
    path = str(tmp_path / "p.duckdb")
    con = open_db(path)
    blocks = MetricBlocks()
    seq = {1: 0, 2: 0}
    for i in range(60):
        if i == 30:  # a restart: a fresh writer learns the series from the file
            con.close()
            con = open_db(path)
            blocks = MetricBlocks()
        attempt = 1 if i < 45 else 2
        size = rng.choice([1, 2, 3, 7, 8, 9, 17, 40, 200])
        names = [rng.choice(["loss", "loss", "lr", "eval_loss"]) for _ in range(size)]
        b = batch(seq[attempt], names, attempt)
        if i % 11 == 5:  # a write that fails: nothing of it stays, and the same batch comes again
            put(con, blocks, [b], commit=False)
        put(con, blocks, [b])
        seq[attempt] += size
    expected = con.execute(EXPECTED).fetchall()
    assert len(expected) > 100
    assert con.execute(WRITTEN).fetchall() == expected


def test_a_long_series_downsampled_from_blocks_answers_as_from_its_points(tmp_path: Path) -> None:
    con = open_db(str(tmp_path / "p.duckdb"))
    blocks = MetricBlocks()
    points = BLOCK_POINTS * BLOCKS_PER_BUCKET * 50 + 5  # 50 buckets' worth of blocks, 5 loose points
    for first in range(0, points, 997):
        put(con, blocks, [batch(first, ["loss"] * min(997, points - first))])
    reader = Reader(con)
    query = MetricQuery(names=["loss"], downsample=50, limit=100_000)
    got, _ = asyncio.run(reader.metrics(JOB, query))
    # The same from the points alone, in SQL (a step range reads the points: it may cut a block).
    plain, _ = asyncio.run(reader.metrics(JOB, dataclasses.replace(query, step_min=0)))
    columns, _ = asyncio.run(reader.metric_columns(JOB, query))
    reader.close()
    assert json.loads(bytes(columns["loss"].step)) == [p.step for p in got["loss"]]
    assert len(got["loss"]) == len(plain["loss"]) == 50
    # Each bucket's edges move by less than a block: means and steps stay close, the last point
    # (its latest step) is the same.
    for a, b in zip(got["loss"], plain["loss"], strict=True):
        assert abs(a.value - b.value) < 0.5, (a, b)
        assert abs(a.step - b.step) <= BLOCK_POINTS, (a, b)
    assert got["loss"][-1].step == plain["loss"][-1].step == (points - 1) // 2
    assert sum(p.value for p in got["loss"]) != sum(p.value for p in plain["loss"])  # read from the blocks


def test_long_and_short_series_downsampled_together(tmp_path: Path) -> None:
    """A chart of every series of a job: `loss` long enough for its blocks, `eval_loss` (a
    point in 50) read from its points, each as the SQL path answers it."""
    con = open_db(str(tmp_path / "p.duckdb"))
    blocks = MetricBlocks()
    names = ["eval_loss" if i % 50 == 0 else "loss" for i in range(BLOCK_POINTS * BLOCKS_PER_BUCKET * 20 * 2)]
    for first in range(0, len(names), 1000):
        put(con, blocks, [batch(first, names[first:first + 1000])])
    reader = Reader(con)
    query = MetricQuery(names=[], downsample=20, limit=100_000)
    got, _ = asyncio.run(reader.metrics(JOB, query))
    plain, _ = asyncio.run(reader.metrics(JOB, dataclasses.replace(query, step_min=0)))
    columns, _ = asyncio.run(reader.metric_columns(JOB, query))
    reader.close()
    assert sorted(got) == sorted(columns) == ["eval_loss", "loss"]
    assert got["eval_loss"] == plain["eval_loss"]  # from its points: the same buckets
    assert len(got["loss"]) == len(plain["loss"]) == 20
    assert got["loss"][-1].step == plain["loss"][-1].step
    for name in got:
        assert json.loads(bytes(columns[name].step)) == [p.step for p in got[name]]


def test_several_names_or_none_downsampled_answer_alike(tmp_path: Path) -> None:
    """Series asked for by name (one, several, one with no points) answer as when every series
    is asked for, whichever order the names come in."""
    con = open_db(str(tmp_path / "p.duckdb"))
    blocks = MetricBlocks()
    names = ["lr" if i % 3 == 0 else "loss" for i in range(BLOCK_POINTS * BLOCKS_PER_BUCKET * 10 * 3)]
    names[::50] = ["eval_loss"] * len(names[::50])
    for first in range(0, len(names), 700):
        put(con, blocks, [batch(first, names[first:first + 700])])
    put(con, blocks, [batch(len(names), ["loss"] * 40, attempt=2)])
    reader = Reader(con)

    def read(wanted: list[str], attempt: int | None = None) -> dict:
        query = MetricQuery(names=wanted, downsample=10, limit=100_000, attempt=attempt)
        got, _ = asyncio.run(reader.metrics(JOB, query))
        columns, _ = asyncio.run(reader.metric_columns(JOB, query))
        assert {name: json.loads(bytes(c.value)) for name, c in columns.items()} == {
            name: [p.value for p in points] for name, points in got.items()}
        return got

    every = read([])
    assert sorted(every) == ["eval_loss", "loss", "lr"]
    assert {p.attempt for p in every["loss"]} == {1, 2}
    assert read(["lr", "nope", "eval_loss"]) == {"lr": every["lr"], "eval_loss": every["eval_loss"]}
    assert read(["loss"]) == {"loss": every["loss"]}
    assert read(["loss"], attempt=2) == {"loss": [p for p in every["loss"] if p.attempt == 2]}
    assert read(["nope"]) == {}
    assert read(["nope", "none"]) == {}
    reader.close()


def test_a_projection_of_version_4_gets_its_blocks_in_place(tmp_path: Path) -> None:
    """Upgrading keeps every stored point (the streams, trimmed by their limits, may no longer
    hold them all) and makes the blocks of them, as ingest would have."""
    path = str(tmp_path / "p.duckdb")
    con = open_db(path)
    blocks = MetricBlocks()
    for first, size in ((0, 37), (37, 100), (137, 5)):
        put(con, blocks, [batch(first, ["loss", "lr"] * (size // 2) + ["loss"] * (size % 2))])
    written = con.execute(WRITTEN).fetchall()
    con.execute("DROP TABLE metric_blocks")  # as version 4 had it
    con.execute("UPDATE schema_version SET version = 4")
    con.close()
    con = open_db(path)
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert con.execute("SELECT count(*) FROM metrics").fetchall() == [(142,)]
    assert con.execute(WRITTEN).fetchall() == written
    assert not list(tmp_path.glob("*.old"))
