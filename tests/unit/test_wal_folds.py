"""The projection folds DuckDB's WAL into its file while nothing is being written
(gateway/projection/checkpoints.py), not in the middle of a burst."""

import asyncio
import time
from pathlib import Path

import duckdb

from gateway.projection.checkpoints import IdleCheckpoints
from gateway.projection.schema import open_db


def _write_lines(con: duckdb.DuckDBPyConnection, batches: int) -> None:
    cursor = con.cursor()
    for b in range(batches):  # one transaction each, as the projector commits a batch
        cursor.execute(
            "INSERT INTO logs (job_id, job_key, attempt, seq, ts_s, stream, level, kind, text) "
            "SELECT 'job_20261201_120000_aaaaaa', 1, 1, i, 0, 'stdout', 'INFO', 'train', 'line ' || i "
            "FROM range(?, ?) t(i)", [b * 100, b * 100 + 100])
    cursor.close()


async def test_the_wal_is_folded_once_writes_pause_and_not_before(tmp_path: Path) -> None:
    path = str(tmp_path / "p.duckdb")
    con = open_db(path)
    folds = IdleCheckpoints(con, idle_s=0.4, min_wal_bytes=1)
    _write_lines(con, 20)
    assert folds.wal_bytes() > 0
    task = asyncio.create_task(folds.run())
    try:
        for _ in range(30):  # batches keep coming for 0.6 s: nothing is folded meanwhile
            folds.wrote()
            await asyncio.sleep(0.02)
        assert folds.wal_bytes() > 0
        deadline = time.monotonic() + 10
        while folds.wal_bytes() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert folds.wal_bytes() == 0
    finally:
        task.cancel()
        folds.close()
    assert con.execute("SELECT count(*) FROM logs").fetchall() == [(2000,)]
    con.close()
    again = open_db(path)  # the file alone holds everything
    assert again.execute("SELECT count(*), max(seq) FROM logs").fetchall() == [(2000, 1999)]
    again.close()


async def test_a_small_wal_waits_for_the_automatic_fold(tmp_path: Path) -> None:
    con = open_db(str(tmp_path / "p.duckdb"))
    folds = IdleCheckpoints(con, idle_s=0.05, min_wal_bytes=64 << 20)
    _write_lines(con, 5)
    before = folds.wal_bytes()
    task = asyncio.create_task(folds.run())
    await asyncio.sleep(0.3)
    task.cancel()
    folds.close()
    assert 0 < before == folds.wal_bytes()
    con.close()
