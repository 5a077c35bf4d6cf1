from pathlib import Path

import duckdb

from gateway.projection.schema import SCHEMA_VERSION, open_db
from shared.ids import job_key, new_job_id


def test_job_key_orders_like_submit_time_and_accepts_any_id() -> None:
    earlier, later = "job_20261122_120000_ffffff", "job_20261122_120001_000000"
    assert job_key(earlier) < job_key(later)
    assert job_key(new_job_id()) > job_key(later)
    assert job_key("imported-job") == job_key("imported-job")  # stable for other shapes too
    assert 0 <= job_key("job_20991231_235959_ffffff") < 2**63


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
