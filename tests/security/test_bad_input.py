"""Bad input never answers 500 (security review M8, L2): each malformed request is a 4xx naming
what is wrong, on the main API and seed 000's routes, and nothing is stored."""

from __future__ import annotations

import pytest

from tests.conftest import WORKSPACE, Cluster

DP = {"trainer": "diffusion-pipe", "model_type": "flux", "gpus": 0,
      "dataset": {"directories": [{"path": str(WORKSPACE)}]}, "config": {"epochs": 1}}

BAD = [
    ({**DP, "config": {"epochs": 1, "model": "x"}}, 400, "config.model"),
    ({**DP, "config": {"epochs": 1, "adapter": "x"}}, 400, "config.adapter"),
    ({**DP, "config": {"epochs": 1, "optimizer": [1]}}, 400, "config.optimizer"),
    ({**DP, "config": {"epochs": 1, "model": {"dtype": []}}}, 400, "config.model.dtype"),
    ({**DP, "config": {"epochs": 1, "adapter": {"type": ["lora"]}}}, 400, "config.adapter.type"),
    ({**DP, "config": {"epochs": -5}}, 400, "config.epochs"),
    ({**DP, "config": {"epochs": "many"}}, 400, "config.epochs"),
    ({**DP, "config": {"epochs": 10**30}}, 400, "config.epochs"),
    ({**DP, "dataset": {"directories": [{"path": str(WORKSPACE), "num_repeats": -1}]}}, 400,
     "dataset.directories[0].num_repeats"),
    ({"trainer": "command", "command": ["true"], "gpu_ids": [1, 1, 1]}, 422, "gpu_ids"),
    ({"trainer": "command", "command": ["true"], "gpus": 2, "gpu_ids": [0]}, 422, "gpus"),
    ({"trainer": "command", "command": ["true"], "gpus": 0, "webhook_url": "https://example.com/h",
      "webhook_progress": [50, 50]}, 422, "webhook_progress"),
]


def _total(cluster: Cluster) -> int:
    return int(cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"])


@pytest.mark.parametrize(("body", "status", "field"), BAD)
def test_a_malformed_job_is_a_4xx_naming_the_field(cluster: Cluster, body: dict, status: int, field: str) -> None:
    before = _total(cluster)
    r = cluster.api.client.post("/jobs", json=body)
    assert r.status_code == status and r.json()["field"] == field, r.text
    assert _total(cluster) == before


@pytest.mark.parametrize("route", ["/api/v1/training/jobs", "/api/v1/training/start"])
@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_json_nested_past_any_depth_is_a_400(cluster: Cluster, route: str, depth: int) -> None:
    before = _total(cluster)
    body = '{"trainer": "hf", "name": "x", "config": ' + "[" * depth + "]" * depth + "}"
    r = cluster.api.client.post(f"{cluster.url}{route}", content=body.encode(),
                                headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert _total(cluster) == before
