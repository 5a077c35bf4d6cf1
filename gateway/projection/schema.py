"""The DuckDB schema of the projection. Users query it with SQL; README documents it.

Tables that hold one row per key (jobs, progress, hosts, gpus) are kept unique by the
projector, their only writer, without PRIMARY KEY constraints: DuckDB turns an UPDATE of a
list column into delete+insert, which trips an index on the key.

Times are seconds since the epoch in DOUBLE columns named `*_s` (`to_timestamp(ts_s)` in SQL).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import duckdb

log = logging.getLogger("trainyard.schema")

# Bump when the DDL changes. The projection is disposable: a file of another version is moved
# aside and a fresh one replays the streams from the start, unless MIGRATIONS can bring it up
# to date in place (the streams may no longer hold all it shows: their limits trim them).
SCHEMA_VERSION = 5
# Consecutive points of a series per row of `metric_blocks` (projection/blocks.py).
METRIC_BLOCK_POINTS = 8

DDL = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS projector_offsets (
    stream VARCHAR PRIMARY KEY,
    last_seq UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id VARCHAR NOT NULL,
    submit_seq UBIGINT NOT NULL,
    name VARCHAR, description VARCHAR, trainer VARCHAR NOT NULL,
    priority INTEGER NOT NULL, gpus INTEGER NOT NULL,
    requested_gpu_ids INTEGER[], requested_host VARCHAR, min_gpu_memory_gb DOUBLE,
    max_retries INTEGER NOT NULL, submitted_by VARCHAR, spec VARCHAR NOT NULL,
    status VARCHAR NOT NULL, attempt INTEGER NOT NULL,
    host VARCHAR, gpu_ids INTEGER[],
    submitted_s DOUBLE NOT NULL, started_s DOUBLE, finished_s DOUBLE,
    exit_code INTEGER, signal INTEGER, reason VARCHAR, stop_requested BOOLEAN,
    pid INTEGER, run_dir VARCHAR, stdout_path VARCHAR, stderr_path VARCHAR,
    last_lines VARCHAR[], updated_s DOUBLE, failures INTEGER,
    resume_from VARCHAR, preempted_by VARCHAR, preemptions INTEGER
);
CREATE TABLE IF NOT EXISTS job_events (
    stream_seq UBIGINT PRIMARY KEY,
    job_id VARCHAR NOT NULL, job_key BIGINT NOT NULL, attempt INTEGER NOT NULL, type VARCHAR NOT NULL,
    ts_s DOUBLE NOT NULL, data VARCHAR NOT NULL,
    applied BOOLEAN NOT NULL, note VARCHAR
);
CREATE TABLE IF NOT EXISTS logs (
    job_id VARCHAR NOT NULL, job_key BIGINT NOT NULL, attempt INTEGER NOT NULL, seq BIGINT NOT NULL,
    ts_s DOUBLE NOT NULL,
    stream VARCHAR NOT NULL, level VARCHAR NOT NULL, kind VARCHAR NOT NULL, text VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id VARCHAR NOT NULL, job_key BIGINT NOT NULL, attempt INTEGER NOT NULL, seq BIGINT NOT NULL,
    step BIGINT, epoch DOUBLE, name VARCHAR NOT NULL, value DOUBLE NOT NULL, ts_s DOUBLE NOT NULL
);
-- Blocks of 8 consecutive points of a series, rolled up at ingest (projection/blocks.py).
CREATE TABLE IF NOT EXISTS metric_blocks (
    job_id VARCHAR NOT NULL, job_key BIGINT NOT NULL, attempt INTEGER NOT NULL, name VARCHAR NOT NULL,
    block BIGINT NOT NULL, n INTEGER NOT NULL, value_sum DOUBLE NOT NULL, step BIGINT, epoch DOUBLE,
    ts_s DOUBLE NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    job_id VARCHAR NOT NULL, attempt INTEGER NOT NULL,
    step BIGINT, total_steps BIGINT, epoch DOUBLE, total_epochs INTEGER, percent DOUBLE,
    rate_steps_s DOUBLE, eta_s DOUBLE, estimated BOOLEAN NOT NULL, ts_s DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id VARCHAR NOT NULL, attempt INTEGER NOT NULL, path VARCHAR NOT NULL, step BIGINT,
    ts_s DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    host VARCHAR NOT NULL, last_seen_s DOUBLE NOT NULL, agent_started_s DOUBLE NOT NULL,
    heartbeat_interval_s DOUBLE NOT NULL, cpu_percent DOUBLE, memory_total_mb BIGINT,
    memory_used_mb BIGINT, disk_free_mb BIGINT, running_jobs VARCHAR[], gpu_count INTEGER,
    gpu_note VARCHAR
);
CREATE TABLE IF NOT EXISTS gpus (
    host VARCHAR NOT NULL, gpu_index INTEGER NOT NULL, uuid VARCHAR, name VARCHAR,
    memory_total_mb BIGINT, memory_used_mb BIGINT, utilization_pct DOUBLE, temperature_c DOUBLE,
    power_w DOUBLE, pids INTEGER[], simulated BOOLEAN NOT NULL, ts_s DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS gpu_samples (
    host VARCHAR NOT NULL, gpu_index INTEGER NOT NULL, ts_s DOUBLE NOT NULL,
    memory_used_mb BIGINT, utilization_pct DOUBLE, temperature_c DOUBLE, power_w DOUBLE,
    job_id VARCHAR, attempt INTEGER
);
-- A job's GPUs over time: each sample joined (by the heartbeat that carried it) to the attempt
-- that held the GPU then.
CREATE VIEW IF NOT EXISTS job_gpu_samples AS
    SELECT job_id, attempt, host, gpu_index, ts_s, utilization_pct, memory_used_mb, temperature_c, power_w
    FROM gpu_samples WHERE job_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS scheduler_events (
    stream_seq UBIGINT NOT NULL, type VARCHAR NOT NULL, ts_s DOUBLE NOT NULL,
    by_role VARCHAR, reason VARCHAR, data VARCHAR
);
CREATE TABLE IF NOT EXISTS exports (
    export_id VARCHAR NOT NULL, job_id VARCHAR NOT NULL, attempt INTEGER NOT NULL,
    status VARCHAR NOT NULL, checkpoint VARCHAR, path VARCHAR, reason VARCHAR,
    requested_s DOUBLE NOT NULL, finished_s DOUBLE
);
"""

# In-place upgrades: version -> the statements that bring a file of that version to the next,
# run after the DDL has made the new tables, in one transaction with the version's update.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    4: (  # metric_blocks, from the points stored
        f"INSERT INTO metric_blocks SELECT job_id, any_value(job_key), attempt, name, o // {METRIC_BLOCK_POINTS}, "
        f"count(*), sum(value), max(step), max(epoch), max(ts_s), min(seq), max(seq) "
        f"FROM (SELECT *, row_number() OVER (PARTITION BY job_id, attempt, name ORDER BY seq) - 1 AS o FROM metrics) "
        f"GROUP BY job_id, attempt, name, o // {METRIC_BLOCK_POINTS}",
    ),
}

# DuckDB folds its write-ahead log into the file once the log is this big. Its default (16 MB)
# checkpoints every few hundred thousand log lines, and a checkpoint stalls the commit that runs
# it: 64 MB took log lines stdout -> queryable from 126-212k to 184-228k lines/s (bench.spine
# (b), same machine, same hour). The price: up to 64 MB of log to replay after a crash, and as
# much held in memory until it is folded in.
CHECKPOINT_THRESHOLD = "64MB"

# Tables a rebuild must reproduce exactly (hosts/gpus hold "latest" rows and compare too).
PROJECTED_TABLES = (
    "jobs", "job_events", "logs", "metrics", "metric_blocks", "progress", "checkpoints",
    "hosts", "gpus", "gpu_samples", "exports", "scheduler_events",
)


def _version_of(path: str) -> int | None:
    con = duckdb.connect(path)
    try:
        has_table = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version'"
        ).fetchall()[0][0]
        if not has_table:
            return None
        return con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    finally:
        con.close()


def _set_aside(path: str, tag: str, why: str) -> None:
    """Move the projection (and its WAL) out of the way; the projector replays the streams into
    a fresh file (the projection is disposable: JetStream holds every fact)."""
    aside = f"{path}.{tag}.old"
    log.warning("projection %s %s: moved to %s; replaying the streams into a fresh file", path, why, aside)
    os.replace(path, aside)
    if Path(path + ".wal").exists():
        os.replace(path + ".wal", aside + ".wal")


def _offsets_disagree(path: str) -> str | None:
    """Why the job stream's stored offset does not match the events stored (rows removed behind
    the projector's back), or None."""
    con = duckdb.connect(path)
    try:
        offset = con.execute("SELECT max(last_seq) FROM projector_offsets WHERE stream = 'TY_JOB'").fetchall()[0][0]
        stored = con.execute("SELECT greatest((SELECT coalesce(max(stream_seq), 0) FROM job_events), "
                             "(SELECT coalesce(max(stream_seq), 0) FROM scheduler_events))").fetchall()[0][0]
    finally:
        con.close()
    if offset and offset != stored:
        return f"says the job stream is applied up to {offset}, but its last stored event is {stored}"
    return None


def _migrate(path: str, found: int) -> bool:
    """Bring a file of version `found` up to SCHEMA_VERSION in place, if MIGRATIONS can."""
    if any(version not in MIGRATIONS for version in range(found, SCHEMA_VERSION)):
        return False
    con = duckdb.connect(path)
    try:
        con.execute(DDL)
        con.execute("BEGIN TRANSACTION")
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                con.execute(statement)
        con.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION])
        con.execute("COMMIT")
    finally:
        con.close()
    log.info("projection %s upgraded in place from schema version %s to %s", path, found, SCHEMA_VERSION)
    return True


def query_threads(setting: int) -> int:
    """The DuckDB thread count for the gateway setting `duckdb_threads` (0 or less: half the
    cores, at least one)."""
    return setting if setting > 0 else max(1, (os.cpu_count() or 2) // 2)


def open_db(path: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    if path != ":memory:" and Path(path).exists():
        try:
            found = _version_of(path)
            if found is not None and found < SCHEMA_VERSION and _migrate(path, found):
                found = SCHEMA_VERSION
            disagreement = _offsets_disagree(path) if found == SCHEMA_VERSION else None
        except duckdb.Error as exc:  # a damaged header or WAL, a truncated or empty file, a failed upgrade
            _set_aside(path, f"damaged-{int(time.time())}", f"cannot be opened ({str(exc).splitlines()[0]})")
        else:
            if found != SCHEMA_VERSION:
                _set_aside(path, f"v{found or 1}", f"has schema version {found}, not {SCHEMA_VERSION}")
            elif disagreement:
                _set_aside(path, f"inconsistent-{int(time.time())}", disagreement)
    con = duckdb.connect(path)
    con.execute(DDL)
    if not con.execute("SELECT count(*) FROM schema_version").fetchall()[0][0]:
        con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
    # No file or network access from SQL, ever (read_csv('/etc/...'), COPY TO, ATTACH, INSTALL):
    # users run SQL against this database (POST /api/v1/sql). It cannot be turned back on.
    con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
    con.execute("SET enable_external_access = false")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    # Nothing may change a setting from here on (a user query could otherwise starve the
    # projector with `SET memory_limit`); settings are made above, once, at open.
    con.execute("SET lock_configuration = true")
    return con
