"""Ownership is by token, not by a name anyone can reuse (security review L3): token names are
unique, `admin` is reserved, and a revoked token fails on the next request."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import TRAINERS, Cluster


def _token(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainyard", "token", *args, "--data-dir", str(cluster.data_dir)],
                          capture_output=True, text=True, timeout=60)


def _client(cluster: Cluster, token: str) -> httpx.Client:
    return httpx.Client(base_url=f"{cluster.url}/api/v1/training", headers={"Authorization": f"Bearer {token}"})


def test_a_name_is_held_by_one_token_and_admin_is_reserved(cluster: Cluster) -> None:
    alice = _token(cluster, "create", "--role", "operator", "--name", "tok-alice")
    assert alice.returncode == 0, alice.stderr
    again = _token(cluster, "create", "--role", "operator", "--name", "tok-alice")
    assert again.returncode == 1 and "exists" in again.stderr and "ty_" not in again.stdout
    posing = _token(cluster, "create", "--role", "operator", "--name", "admin")
    assert posing.returncode == 1 and "reserved" in posing.stderr and "ty_" not in posing.stdout
    # alice's job is hers alone: another operator may not stop it.
    job = _client(cluster, alice.stdout.strip()).post("/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "numbered.py"), "gpus": 0, "hold": True}).json()["job_id"]
    bob = _token(cluster, "create", "--role", "operator", "--name", "tok-bob").stdout.strip()
    assert _client(cluster, bob).post(f"/jobs/{job}/stop").status_code == 403
    assert cluster.api.status(job)["status"] == "pending"
    names = dict(line.split("\t") for line in _token(cluster, "list").stdout.splitlines())
    assert names["tok-alice"] == "operator" and names["tok-bob"] == "operator" and "ty_" not in str(names)


def test_a_revoked_token_fails_on_the_next_request(cluster: Cluster) -> None:
    token = _token(cluster, "create", "--role", "viewer", "--name", "tok-revoked").stdout.strip()
    client = _client(cluster, token)
    assert client.get("/jobs").status_code == 200
    assert _token(cluster, "revoke", "tok-revoked").returncode == 0
    assert client.get("/jobs").status_code == 401
    assert _token(cluster, "revoke", "tok-revoked").returncode == 1
