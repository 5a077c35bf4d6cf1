"""A job's `env` cannot take over a process (security review C2, M2): an operator may not set a
variable that makes a loader, an interpreter or a tool run other code, picks the executable, or
is trainyard's own; and nobody's env overrides what trainyard sets for the attempt."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import TRAINERS, Cluster

FORBIDDEN = [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONWARNINGS", "PYTHONSTARTUP",
    "PYTHONHOME", "PYTHONINSPECT", "PATH", "BROWSER", "PERL5OPT", "NODE_OPTIONS", "BASH_ENV", "ENV",
    "IFS", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TRAINYARD_JOB_ID", "TRAINYARD_ATTEMPT",
    "GIT_SSH_COMMAND", "PAGER", "DYLD_INSERT_LIBRARIES", "pythonpath", "Ld_Preload",
]
ALLOWED = {"HF_TOKEN": "hf_x", "WANDB_MODE": "offline", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> httpx.Client:
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("operator", "env-operator")
    return httpx.Client(base_url=f"{cluster.url}/api/v1/training", headers={"Authorization": f"Bearer {token}"})


def _job_count(cluster: Cluster) -> int:
    return int(cluster.api.client.get("/jobs", params={"limit": 1}).json()["total"])


@pytest.mark.parametrize("name", FORBIDDEN)
def test_an_operator_may_not_set_a_variable_that_runs_code(cluster: Cluster, operator: httpx.Client,
                                                           name: str) -> None:
    before = _job_count(cluster)
    r = operator.post("/jobs", json={"trainer": "hf", "script": str(TRAINERS / "numbered.py"), "gpus": 0,
                                     "hold": True, "env": {name: "x"}})
    assert r.status_code == 422 and r.json()["field"] == f"env.{name}", r.text
    assert _job_count(cluster) == before


def test_harmless_variables_are_fine_for_an_operator(cluster: Cluster, operator: httpx.Client) -> None:
    r = operator.post("/jobs", json={"trainer": "hf", "script": str(TRAINERS / "numbered.py"), "gpus": 0,
                                     "hold": True, "env": ALLOWED})
    assert r.status_code == 201, r.text


def test_trainyards_own_variables_win_over_any_env(cluster: Cluster) -> None:
    """Even an admin's env cannot widen the GPUs a job sees or pose as another job."""
    names = ("CUDA_VISIBLE_DEVICES", "TRAINYARD_JOB_ID", "TRAINYARD_ATTEMPT")
    dump = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    job = cluster.api.submit([sys.executable, "-c", dump],
                             env={"CUDA_VISIBLE_DEVICES": "0,1", "TRAINYARD_JOB_ID": "job_someone_else",
                                  "TRAINYARD_ATTEMPT": "9"})
    assert cluster.api.wait(job)["status"] == "succeeded"
    seen = json.loads(next(ln["text"] for ln in cluster.api.logs(job) if ln["stream"] == "stdout"))
    assert seen == {"CUDA_VISIBLE_DEVICES": "", "TRAINYARD_JOB_ID": job, "TRAINYARD_ATTEMPT": "1"}
