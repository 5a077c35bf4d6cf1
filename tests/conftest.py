"""Shared fixtures: a real nats-server per test session (free port, temp store), and a real
gateway and agent as separate processes, exactly as `trainyard up` runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.harness import TERMINAL, TRAINERS, Api, pid_alive
from trainyard.stack import Stack, free_port

__all__ = ["TERMINAL", "TRAINERS", "WORKSPACE", "Api", "pid_alive", "python_job"]


# Every gateway and agent the tests start (they inherit this environment) confines paths to the
# stand-in trainers and one workspace, as a deployment would to its datasets and scripts.
WORKSPACE = Path(tempfile.mkdtemp(prefix="trainyard-workspace-"))
os.environ["TRAINYARD_ALLOWED_ROOTS"] = f"{TRAINERS}{os.pathsep}{WORKSPACE}"
# Their webhooks are posted to listeners on loopback, which a deployment must open explicitly.
os.environ["TRAINYARD_WEBHOOK_ALLOW"] = "127.0.0.1/32"


def pytest_unconfigure() -> None:
    shutil.rmtree(WORKSPACE, ignore_errors=True)


TIERS = ("unit", "integration", "faults", "fuzz", "security")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked with its tier, the folder it lives in (`-m unit` selects one)."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


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
    stack = Stack(nats_dir=nats.stack.nats_dir, nats_port=nats.port)
    # The stand-in `swift` and `deepspeed` on the agent's PATH, as a GPU host has the real ones
    # (trainer executables come from the agent's PATH, never from a job's env).
    stand_ins = {"PATH": f"{TRAINERS / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    stack.start_agent("test-host", work_dir, nats.url, work_dir / "agent.log", "--heartbeat-interval-s", "1",
                      env=stand_ins)
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
    api.client.close()
    stack.stop()


def python_job(script: str, *args: str) -> list[str]:
    return [sys.executable, str(TRAINERS / script), *args]


def cli(cluster: Cluster, *args: str, cwd: Path | None = None, token: str | None = None,
        timeout_s: float = 60) -> subprocess.CompletedProcess:
    """The real `trainyard` command against the cluster, as a user types it (the gateway and
    token flags right after the subcommand, so that `-- argv` can come last)."""
    return subprocess.run([sys.executable, "-m", "trainyard", args[0], "--url", cluster.url,
                           "--token", token or cluster.token, *args[1:]],
                          capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
