"""Secrets are not shown to people who may not see them (security review M5): `env` values and a
webhook URL's credentials and query are redacted for everyone but the submitter and admins, in
the job's detail, seed 000's detail and the job's events."""

from __future__ import annotations

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import TRAINERS, Cluster

SECRET = "s3cr3t-value-123"


@pytest.fixture(scope="module")
def people(cluster: Cluster) -> dict[str, httpx.Client]:
    store = TokenStore(cluster.data_dir / TOKENS_FILE)
    out = {}
    for name, role in (("sec-alice", "operator"), ("sec-bob", "operator"), ("sec-viewer", "viewer")):
        token = store.create(role, name)
        out[name] = httpx.Client(base_url=f"{cluster.url}/api/v1", headers={"Authorization": f"Bearer {token}"})
    return out


@pytest.fixture(scope="module")
def job(people: dict[str, httpx.Client]) -> str:
    r = people["sec-alice"].post("/training/jobs", json={
        "trainer": "hf", "script": str(TRAINERS / "numbered.py"), "gpus": 0, "hold": True,
        "env": {"HF_TOKEN": SECRET, "WANDB_API_KEY": SECRET},
        "webhook_url": f"https://hooks.example/notify?token={SECRET}#{SECRET}"})
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


VIEWS = ["/training/jobs/{job}", "/training/{job}", "/training/jobs/{job}/events"]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("who", ["sec-bob", "sec-viewer"])
def test_others_see_no_secret(people: dict[str, httpx.Client], job: str, view: str, who: str) -> None:
    r = people[who].get(view.format(job=job))
    assert r.status_code == 200, r.text
    assert SECRET not in r.text
    assert "HF_TOKEN" in r.text and "hooks.example/notify" in r.text  # the names stay; the values go


@pytest.mark.parametrize("view", VIEWS)
def test_the_submitter_and_admins_see_them(cluster: Cluster, people: dict[str, httpx.Client], job: str,
                                           view: str) -> None:
    assert SECRET in people["sec-alice"].get(view.format(job=job)).text
    assert SECRET in cluster.api.client.get(f"{cluster.url}/api/v1" + view.format(job=job)).text
