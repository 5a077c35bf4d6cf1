"""Shared fixtures: a real nats-server per test session (free port, temp store), and a real
gateway and agent as separate processes, exactly as `trainyard up` runs them."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.auth import TOKENS_FILE, TokenStore
from trainyard.stack import Stack, free_port

TRAINERS = Path(__file__).parent / "trainers"
TERMINAL = {"succeeded", "failed", "stopped", "lost"}


@dataclass
class Nats:
    url: str
    port: int
    stack: Stack


@pytest.fixture(scope="session")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    port = free_port()
    assert port != 4222
    stack = Stack()
    stack.start_nats(tmp_path_factory.mktemp("nats"), port)
    yield Nats(f"nats://127.0.0.1:{port}", port, stack)
    stack.stop()


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url
        self.client = httpx.Client(base_url=f"{base_url}/api/v1/training",
                                   headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def submit(self, command: list[str], **fields) -> str:
        r = self.client.post("/jobs", json={"trainer": "command", "command": command, "gpus": 0, **fields})
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    def status(self, job_id: str) -> dict:
        r = self.client.get(f"/jobs/{job_id}/status")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, statuses=TERMINAL, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status(job_id)
            if st["status"] in statuses:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {st['status']} after {timeout_s}s")
            time.sleep(0.05)

    def logs(self, job_id: str, **params) -> list[dict]:
        lines: list[dict] = []
        after = None
        while True:
            q = {"limit": 10000, **params}
            if after is not None:
                q["after_seq"] = after
            r = self.client.get(f"/jobs/{job_id}/logs", params=q)
            assert r.status_code == 200, r.text
            page = r.json()["lines"]
            lines += page
            if len(page) < 10000 or "tail" in params:
                return lines
            after = page[-1]["seq"]


@dataclass
class Cluster:
    api: Api
    url: str
    data_dir: Path
    work_dir: Path
    nats: Nats
    stack: Stack
    token: str
    host: str


@pytest.fixture(scope="session")
def cluster(nats: Nats, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("gateway")
    work_dir = tmp_path_factory.mktemp("agent")
    token = TokenStore(data_dir / TOKENS_FILE).create("admin")
    port = free_port()
    stack = Stack()
    stack.start_agent("test-host", work_dir, nats.url, work_dir / "agent.log", "--heartbeat-interval-s", "1")
    stack.start_gateway(data_dir, port, nats.url)
    url = f"http://127.0.0.1:{port}"
    api = Api(url, token)
    # The agent's first heartbeat makes the host schedulable.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = api.submit([sys.executable, "-c", "print('ready')"])
        if api.wait(job)["status"] == "succeeded":
            break
    yield Cluster(api, url, data_dir, work_dir, nats, stack, token, "test-host")
    stack.stop()


def python_job(script: str, *args: str) -> list[str]:
    return [sys.executable, str(TRAINERS / script), *args]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
