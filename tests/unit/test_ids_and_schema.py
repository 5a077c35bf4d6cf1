import asyncio
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from gateway.projection.schema import SCHEMA_VERSION, open_db, query_threads
from gateway.read.metric_query import MetricQuery
from gateway.read.queries import LogFilter, Reader
from shared.config import GatewaySettings, load_settings
from shared.ids import job_key, job_rows, new_job_id


def test_job_key_orders_like_submit_time_and_accepts_any_id() -> None:
    earlier, later = "job_20261122_120000_ffffff", "job_20261122_120001_000000"
    assert job_key(earlier) < job_key(later)
    assert job_key(new_job_id()) > job_key(later)
    assert job_key("imported-job") == job_key("imported-job")  # stable for other shapes too
    assert 0 <= job_key("job_20991231_235959_ffffff") < 2**63


def test_ids_that_share_a_key_keep_their_own_rows(tmp_path: Path) -> None:
    """A job is found by its key alone (job_rows) where no other id has that key: the time of
    `leap` reads as `midnight`'s (strptime takes second 60 as the next minute), so it is keyed
    and found another way."""
    leap, midnight = "job_20261201_235960_abcdef", "job_20261202_000000_abcdef"
    assert job_rows(midnight) == ("job_key = ?", (job_key(midnight),))
    assert job_key("job_20261301_000000_abcdef") < 2**32  # month 13: no time at all
    con = open_db(str(tmp_path / "p.duckdb"))
    for seq, job in enumerate((leap, midnight, "job_19700101_000001_000000", "imported-job")):
        con.execute("INSERT INTO metrics (job_id, job_key, attempt, seq, step, epoch, name, value, ts_s) "
                    "VALUES (?, ?, 1, ?, 1, NULL, 'loss', ?, 1.0)", [job, job_key(job), seq, float(seq)])
        con.execute("INSERT INTO logs (job_id, job_key, attempt, seq, ts_s, stream, level, kind, text) "
                    "VALUES (?, ?, 1, 0, 1.0, 'stdout', 'INFO', 'train', ?)", [job, job_key(job), job])
    reader = Reader(con)
    for seq, job in enumerate((leap, midnight)):
        points, _ = asyncio.run(reader.metrics(job, MetricQuery(names=["loss"])))
        assert [p.value for p in points["loss"]] == [float(seq)]
        logs = asyncio.run(reader.logs(job, LogFilter(), tail=None, limit=10))
        assert [line.text for line in logs] == [job]
    reader.close()


def test_a_projection_of_another_schema_version_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "projection.duckdb"
    old = duckdb.connect(str(path))
    old.execute("CREATE TABLE logs (job_id VARCHAR, text VARCHAR)")  # version 1 had no job_key
    old.execute("INSERT INTO logs VALUES ('j', 'kept in the old file')")
    old.close()
    con = open_db(str(path))
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    assert con.execute("SELECT count(*) FROM logs").fetchall() == [(0,)]
    con.close()
    aside = duckdb.connect(str(tmp_path / "projection.duckdb.v1.old"))
    assert aside.execute("SELECT text FROM logs").fetchall() == [("kept in the old file",)]
    aside.close()
    assert open_db(str(path)).execute("SELECT count(*) FROM schema_version").fetchall() == [(1,)]


WRITE_AND_DIE = """
import os, sys
from gateway.projection.schema import open_db
con = open_db(sys.argv[1])
con.execute("INSERT INTO job_events SELECT range + 100, 'j', 1, 0, 'x', 1.0, repeat('d', 100), true, NULL "
            "FROM range(1000)")
os._exit(0)
"""


@pytest.mark.parametrize("damage", ["empty", "header", "wal", "offsets"])
def test_a_damaged_projection_is_moved_aside_and_started_afresh(tmp_path: Path, damage: str) -> None:
    """The projection is disposable in fact (security review H4): a file DuckDB cannot open, or
    one whose offsets disagree with its rows, is set aside; the streams fill a fresh one."""
    path = tmp_path / "projection.duckdb"
    con = open_db(str(path))
    con.execute("INSERT INTO job_events (stream_seq, job_id, job_key, attempt, type, ts_s, data, applied) "
                "VALUES (7, 'j', 1, 0, 'submitted', 1.0, '{}', true)")
    # "offsets": the offset says 99 events were applied, but the last stored one is 7.
    con.execute("INSERT INTO projector_offsets VALUES ('TY_JOB', ?)", [99 if damage == "offsets" else 7])
    con.close()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "header":
        with path.open("r+b") as f:
            f.write(b"\xde\xad\xbe\xef" * 64)
    elif damage == "wal":  # a process killed before its checkpoint left a WAL, then bytes went bad
        subprocess.run([sys.executable, "-c", WRITE_AND_DIE, str(path)], check=True)
        wal = tmp_path / "projection.duckdb.wal"
        data = bytearray(wal.read_bytes())
        data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
        wal.write_bytes(bytes(data))
    fresh = open_db(str(path))
    assert fresh.execute("SELECT count(*) FROM job_events").fetchall() == [(0,)]
    assert fresh.execute("SELECT count(*) FROM projector_offsets").fetchall() == [(0,)]
    fresh.close()
    assert [p.name for p in tmp_path.iterdir() if ".old" in p.name and not p.name.endswith(".wal")]


def test_a_job_the_replaying_projection_does_not_show_yet_is_503_not_404() -> None:
    """After a restart on a fresh (or set-aside) projection the streams are replayed; a job not
    replayed yet may exist, so the API says "try again", and says "no job" once caught up."""
    from gateway.errors import NotFound, Unavailable, job_not_found
    from gateway.projection.projector import Projector
    from shared import subjects

    projector = Projector(open_db(":memory:"), "r")
    projector.healthy = True  # as after start()
    projector.catch_up_to = {subjects.JOB_STREAM: 120}
    projector.applied[subjects.JOB_STREAM] = 80
    assert projector.health().startswith("catching up") and not projector.ok
    missing = job_not_found("job_x", projector.catching_up())
    assert isinstance(missing, Unavailable) and "TY_JOB 80 of 120" in str(missing.detail)
    projector.applied[subjects.JOB_STREAM] = 120
    assert isinstance(job_not_found("job_x", projector.catching_up()), NotFound)
    assert projector.health() == "ok" and projector.ok
    projector.applied[subjects.JOB_STREAM] = 80  # later lag is ordinary lag, not a restart's replay
    assert projector.catching_up() is None


def test_duckdb_threads_are_half_the_cores_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's DuckDB leaves cores to the event loop, NATS and trainers (shared/config.py
    says why); `duckdb_threads` sets the count, from the TOML file or the environment."""
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert query_threads(0) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert query_threads(0) == 1
    assert query_threads(3) == 3
    settings = load_settings(GatewaySettings, env={"TRAINYARD_DUCKDB_THREADS": "3"})
    assert query_threads(settings.duckdb_threads) == 3
    con = open_db(str(tmp_path / "projection.duckdb"), threads=query_threads(0))
    assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
    with pytest.raises(duckdb.Error):  # fixed at open, like every setting (users run SQL here)
        con.execute("SET threads = 2")
