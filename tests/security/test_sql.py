"""The SQL endpoint cannot change anything (security review H1, M7): each write shape is refused
and the projection is as it was; an answer is capped in bytes as well as rows."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import Cluster, python_job

WRITES = [
    "WITH d AS (DELETE FROM logs RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE jobs SET name = 'renamed-by-sql' RETURNING *) SELECT count(*) FROM u",
    "WITH i AS (INSERT INTO sql_probe_t VALUES (1) RETURNING *) SELECT * FROM i",
    "EXPLAIN ANALYZE UPDATE jobs SET name = 'renamed-by-sql'",
    "EXPLAIN ANALYZE CREATE TABLE sql_probe_t AS SELECT 42 AS answer",
    "EXPLAIN ANALYZE CREATE MACRO sql_probe_m(x) AS x * 2",
    "EXPLAIN ANALYZE SET memory_limit = '1MB'",
    "EXPLAIN ANALYZE DROP TABLE jobs",
    "WITH d AS (DELETE FROM projector_offsets RETURNING *) SELECT count(*) FROM d",
    "SET memory_limit = '1MB'",
    "PRAGMA memory_limit = '1MB'",
    "CREATE TEMP TABLE sql_probe_t AS SELECT 1",
    "CREATE MACRO sql_probe_m(x) AS x * 2",
    "SELECT 1) AS a, (WITH d AS (DELETE FROM logs RETURNING *) SELECT * FROM d",
    "SELECT 1 AS x) AS q; DELETE FROM jobs; SELECT * FROM (SELECT 1",
    "CHECKPOINT",
    "DETACH trainyard",
]


def _sql(cluster: Cluster, sql: str, **extra: object) -> dict:
    r = cluster.api.client.post(f"{cluster.url}/api/v1/sql", json={"sql": sql, **extra})
    return {"status": r.status_code, **r.json()}


def _snapshot(cluster: Cluster) -> tuple:
    counts = _sql(cluster, "SELECT (SELECT count(*) FROM logs), (SELECT count(*) FROM jobs), "
                           "(SELECT count(*) FROM jobs WHERE name = 'renamed-by-sql'), "
                           "(SELECT count(*) FROM projector_offsets), current_setting('memory_limit'), "
                           "(SELECT count(*) FROM duckdb_tables() WHERE table_name = 'sql_probe_t'), "
                           "(SELECT count(*) FROM duckdb_functions() WHERE function_name = 'sql_probe_m')")
    assert counts["status"] == 200, counts
    return tuple(counts["rows"][0])


@pytest.fixture(scope="module")
def with_a_job(cluster: Cluster) -> Cluster:
    job = cluster.api.submit(python_job("numbered.py", "20"))
    cluster.api.wait(job)
    return cluster


@pytest.mark.parametrize("statement", WRITES)
def test_a_write_through_sql_is_refused_and_changes_nothing(with_a_job: Cluster, statement: str) -> None:
    before = _snapshot(with_a_job)
    assert before[0] > 0 and before[1] > 0 and before[2] == 0
    answer = _sql(with_a_job, statement)
    assert 400 <= answer["status"] < 500 and answer.get("field") == "sql", answer
    assert "Traceback" not in answer["detail"]
    assert _snapshot(with_a_job) == before, statement
    job_list = with_a_job.api.client.get("/jobs", params={"limit": 1})
    assert job_list.status_code == 200 and job_list.json()["jobs"]


def test_queries_still_work_and_an_answer_is_capped_in_bytes(with_a_job: Cluster) -> None:
    assert _sql(with_a_job, "FROM range(3)")["rows"] == [[0], [1], [2]]
    assert _sql(with_a_job, "WITH t AS (SELECT 1 AS x) SELECT x FROM t -- a comment")["rows"] == [[1]]
    before = _snapshot(with_a_job)  # a comment cannot close the wrapping and start a statement
    assert _sql(with_a_job, "SELECT count(*) FROM jobs -- ) AS q; DELETE FROM jobs")["status"] == 200
    assert _snapshot(with_a_job) == before
    big = _sql(with_a_job, "SELECT repeat('x', 1000000) AS blob FROM range(100)", limit=100)
    assert big["status"] == 200 and big["truncated"] is True and big["row_count"] < 10


def test_the_projector_keeps_working_through_a_query_bomb(with_a_job: Cluster) -> None:
    answers: list[dict] = []
    bomb = threading.Thread(target=lambda: answers.append(_sql(
        with_a_job, "SELECT count(*) FROM (SELECT range % 1000003 AS k, count(*) FROM range(50000000000) GROUP BY k)",
        timeout_s=3)))
    bomb.start()
    job = with_a_job.api.submit(python_job("numbered.py", "50"))
    assert with_a_job.api.wait(job, timeout_s=60)["status"] == "succeeded"
    bomb.join(timeout=30)
    assert answers and 400 <= answers[0]["status"] < 500, answers
    assert [ln["text"] for ln in with_a_job.api.logs(job) if ln["stream"] == "stdout"] == [
        f"line {i}" for i in range(50)]
    assert with_a_job.api.client.get(f"{with_a_job.url}/health").json()["status"] == "ok"
