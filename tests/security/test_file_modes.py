"""What `trainyard up` writes is its user's alone (security review C1, M5): the data dir is 0700
and no file or folder under it (API tokens, NATS credentials, the projection, state and log
files) can be read by another local user."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from trainyard.stack import free_port


def test_up_writes_nothing_another_user_can_read(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port, nats_port = free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir), "--port", str(port),
                           "--nats-port", str(nats_port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          start_new_session=True)
    try:
        token = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not token:
            if (data_dir / "api-token").exists():
                token = (data_dir / "api-token").read_text().strip()
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}"}
        while time.monotonic() < deadline:
            try:
                hosts = httpx.get(f"http://127.0.0.1:{port}/api/v1/training/hosts", headers=headers).json()
                if hosts:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        job = httpx.post(f"http://127.0.0.1:{port}/api/v1/training/jobs", headers=headers, json={
            "trainer": "command", "command": [sys.executable, "-c", "print('x')"], "gpus": 0}).json()["job_id"]
        while httpx.get(f"http://127.0.0.1:{port}/api/v1/training/jobs/{job}/status",
                        headers=headers).json()["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(timeout=60)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    readable = [f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in data_dir.rglob("*")
                if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not readable, readable
    names = {p.name for p in data_dir.rglob("*")}
    assert {"api-token", "tokens.json", "trainyard.duckdb", "webhook-secret", "gateway.log"} <= names, names
