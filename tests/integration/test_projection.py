"""The projection is disposable and exact: kill -9 mid-stream re-applies nothing and skips
nothing; a rebuild from the streams gives the same tables; `trainyard up` twice keeps history."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx

from gateway.api.auth import TOKENS_FILE, TokenStore
from shared import subjects
from shared.nats.connect import close_quietly, connect
from tests.conftest import Api, Cluster, python_job
from trainyard.stack import Stack, free_port, wait_for_health

JOB_TABLES = ("jobs", "job_events", "logs", "metrics", "metric_blocks", "progress", "checkpoints")


def start_replica(stack: Stack, data_dir: Path, port: int, nats_url: str) -> subprocess.Popen:
    return stack.start_gateway(data_dir, port, nats_url, "--replica", "g2")


def wait_caught_up(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lag = httpx.get(f"{url}/health").json()["projector_lag"]
        if lag["TY_JOB"] == 0 and lag["TY_LOG"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"replica still behind: {lag}")


async def _log_stream_limits(url: str, credentials: str) -> tuple[int, float]:
    nc = await connect(url, "test-limits", credentials=credentials)
    try:
        config = (await nc.jetstream().stream_info(subjects.LOG_STREAM)).config
        return config.max_bytes or 0, config.max_age or 0.0
    finally:
        await close_quietly(nc)


def test_kill_9_mid_stream_then_rebuild_equals_live(cluster: Cluster, tmp_path: Path) -> None:
    data_dir = tmp_path / "g2"
    data_dir.mkdir()
    token = TokenStore(data_dir / TOKENS_FILE).create("viewer")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stack = Stack(nats_dir=cluster.nats.stack.nats_dir, nats_port=cluster.nats.port)
    try:
        replica = start_replica(stack, data_dir, port, cluster.nats.url)
        n = 200_000
        job = cluster.api.submit(python_job("numbered.py", str(n)))
        for _ in range(3):  # kill -9 while batches are being applied, then restart
            time.sleep(0.4)
            os.kill(replica.pid, signal.SIGKILL)
            replica.wait()
            stack.procs.clear()
            replica = start_replica(stack, data_dir, port, cluster.nats.url)
        assert cluster.api.wait(job, timeout_s=120)["status"] == "succeeded"
        wait_caught_up(url)
        api2 = Api(url, token)
        assert api2.status(job)["status"] == "succeeded"
        stdout = [ln["text"] for ln in api2.logs(job) if ln["stream"] == "stdout"]
        assert len(stdout) == n and stdout == [f"line {i}" for i in range(n)]
        stack.stop()
        live = duckdb.connect(str(data_dir / "trainyard.duckdb"), read_only=True)
        dupes = live.execute(
            "SELECT count(*) - count(DISTINCT (job_id, attempt, seq)) FROM logs").fetchone()[0]
        assert dupes == 0
        out = tmp_path / "rebuilt.duckdb"
        credentials = str(cluster.nats.stack.credentials("gateway"))
        log_limits = asyncio.run(_log_stream_limits(cluster.nats.url, credentials))
        assert log_limits[0] > 0, "the gateway caps the log stream"
        subprocess.run([sys.executable, "-m", "trainyard", "projector", "rebuild", "--nats-url",
                        cluster.nats.url, "--nats-credentials", str(cluster.nats.stack.credentials("gateway")),
                        "--out", str(out)], check=True, timeout=300)
        rebuilt = duckdb.connect(str(out), read_only=True)
        for table in JOB_TABLES:
            q = f"SELECT * FROM {table} ORDER BY ALL"
            a, b = _comparable(live.execute(q).fetchall()), _comparable(rebuilt.execute(q).fetchall())
            assert len(a) == len(b) and a == b, f"{table} differs after rebuild"
        # The rebuild only reads the streams: the log stream keeps the limits the gateway set.
        assert asyncio.run(_log_stream_limits(cluster.nats.url, credentials)) == log_limits
        live.close()
        rebuilt.close()
    finally:
        stack.stop()


def test_up_twice_keeps_jobs_and_history(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port, nats_port = free_port(), free_port()
    argv = [sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir), "--port", str(port),
            "--nats-port", str(nats_port), "--host", "uphost"]

    def up() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_health(f"http://127.0.0.1:{port}", proc, timeout_s=60)
        return proc

    first = up()
    token = (data_dir / "api-token").read_text().strip()
    assert oct((data_dir / "api-token").stat().st_mode & 0o777) == "0o600"
    api = Api(f"http://127.0.0.1:{port}", token)
    job = api.submit([sys.executable, "-c", "print('hello from up')"])
    assert api.wait(job, timeout_s=30)["status"] == "succeeded"
    first.send_signal(signal.SIGINT)
    out, _ = first.communicate(timeout=60)
    assert "API:" in out and f"nats://127.0.0.1:{nats_port}" in out and "stopped" in out
    second = up()
    try:
        api = Api(f"http://127.0.0.1:{port}", token)
        assert api.status(job)["status"] == "succeeded"
        assert any(ln["text"] == "hello from up" for ln in api.logs(job))
        job2 = api.submit([sys.executable, "-c", "print('again')"])
        assert api.wait(job2, timeout_s=30)["status"] == "succeeded"
        listed = api.client.get("/jobs").json()
        assert [j["job_id"] for j in listed["jobs"]] == [job2, job]
    finally:
        second.send_signal(signal.SIGINT)
        second.communicate(timeout=60)


def _comparable(rows: list[tuple]) -> list[tuple]:
    """Rows with nan spelled out (nan != nan; a diverged run's points are stored as nan)."""
    return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows]
