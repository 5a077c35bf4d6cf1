"""No operator reaches a secret or a tool of the control plane (security review C1, M4): no
allowed root may expose the data dir, trainyard's Python environment or its code (the gateway
and the agent refuse to start); the default root is DATA/workspace; and the agent confines a
job's paths again right before launch, so a symlink made after submit leads nowhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from gateway.runtime import allowed_roots
from shared.config import GatewaySettings
from tests.conftest import TRAINERS, WORKSPACE, Cluster
from trainyard.stack import free_port

REPO = Path(__file__).parents[2]


def _start(tmp_path: Path, part: str, roots: str) -> subprocess.CompletedProcess[str]:
    """Start a gateway or an agent with these roots; it must refuse before it needs NATS."""
    argv = {"gateway": ["gateway", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--insecure"],
            "agent": ["agent", "--host", "h", "--work-dir", str(tmp_path / "data" / "work")]}[part]
    env = {**os.environ, "TRAINYARD_ALLOWED_ROOTS": roots, "TRAINYARD_NATS_URL": "nats://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "trainyard", *argv], env=env, capture_output=True, text=True,
                          timeout=60)


EXPOSING = {
    "the data dir": lambda tmp: tmp / "data",
    "a folder above the data dir": lambda tmp: tmp,
    "trainyard's Python environment": lambda tmp: Path(sys.prefix),
    "the checkout with trainyard's code": lambda tmp: REPO,
    "trainyard's code": lambda tmp: REPO / "gateway",
    "the filesystem root": lambda tmp: Path("/"),
}


@pytest.mark.parametrize("part", ["gateway", "agent"])
@pytest.mark.parametrize("what", list(EXPOSING))
def test_a_root_that_exposes_the_control_plane_stops_the_start(tmp_path: Path, part: str, what: str) -> None:
    (tmp_path / "data").mkdir()
    done = _start(tmp_path, part, f"{TRAINERS}{os.pathsep}{EXPOSING[what](tmp_path)}")
    assert done.returncode != 0 and "would expose" in done.stderr, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr


def test_the_default_root_is_the_workspace_in_the_data_dir(tmp_path: Path) -> None:
    roots = allowed_roots(GatewaySettings(data_dir=str(tmp_path / "data")))
    assert roots == [str((tmp_path / "data" / "workspace").resolve())]
    assert (tmp_path / "data" / "workspace").is_dir()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> httpx.Client:
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("operator", "roots-operator")
    return httpx.Client(base_url=f"{cluster.url}/api/v1/training", headers={"Authorization": f"Bearer {token}"})


def _secrets(cluster: Cluster) -> list[str]:
    return [str(cluster.data_dir / TOKENS_FILE), str(cluster.data_dir / "webhook-secret"),
            str(cluster.data_dir / "trainyard.duckdb"), str(cluster.nats.stack.credentials("gateway")),
            str(Path(sys.prefix) / "bin" / "trainyard"), str(REPO / "trainyard" / "cli.py"),
            str(WORKSPACE / ".." / cluster.data_dir.name)]


FIELDS = [
    (lambda p: {"trainer": "hf", "script": p}, "script"),
    (lambda p: {"trainer": "hf", "script": str(TRAINERS / "numbered.py"), "cwd": p}, "cwd"),
    (lambda p: {"trainer": "swift", "model_path": p, "data_path": "d"}, "model_path"),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": p}, "data_path"),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": "d", "output_dir": p}, "output_dir"),
    (lambda p: {"trainer": "swift", "model_path": "m", "data_path": "d", "resume_from_checkpoint": p},
     "resume_from_checkpoint"),
    (lambda p: {"trainer": "diffusion-pipe", "model_type": "flux", "config": {"epochs": 1},
                "dataset": {"directories": [{"path": p}]}}, "dataset.directories[0].path"),
]


def test_no_path_field_reaches_a_secret_or_trainyard_itself(cluster: Cluster, operator: httpx.Client) -> None:
    before = cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"]
    for secret in _secrets(cluster):
        for body, field in FIELDS:
            r = operator.post("/jobs", json={**body(secret), "gpus": 0, "hold": True})
            assert r.status_code == 422 and r.json()["field"] == field, (secret, field, r.text)
    assert cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"] == before


def test_a_symlink_made_after_submit_is_refused_by_the_agent(cluster: Cluster, operator: httpx.Client,
                                                             tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.py").write_text("print('ESCAPED')\n")
    later = WORKSPACE / f"later-{tmp_path.name}"
    r = operator.post("/jobs", json={"trainer": "hf", "script": str(later / "x.py"), "gpus": 0, "hold": True})
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    later.symlink_to(outside)  # after the gateway checked it
    assert operator.post(f"/jobs/{job}/start").status_code == 200
    final = cluster.api.wait(job, timeout_s=30)
    assert final["status"] == "failed" and "symlink" in final["reason"] and cluster.host in final["reason"]
    assert not any("ESCAPED" in line["text"] for line in cluster.api.logs(job))
