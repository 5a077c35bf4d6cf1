"""Arrays and sweeps (issue 20) on a real stack: the right values reach each run, max_parallel
holds, and the parent id lists and stops them all."""

from __future__ import annotations

import itertools
import json
import sys
import time

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import Cluster, cli
from tests.harness import TRAINERS, Api

# Prints what it was given, and when it ran (to see how many ran at once).
REPORTS = """
import json, os, sys, time
began = time.time()
time.sleep(float(sys.argv[1]))
print(json.dumps({"index": os.environ["TRAINYARD_ARRAY_INDEX"], "lr": os.environ.get("LR"),
                  "rank": os.environ.get("RANK"), "sweep": os.environ.get("TRAINYARD_SWEEP"),
                  "began": began, "ended": time.time()}), flush=True)
"""


def ran(cluster: Cluster, job: str) -> dict:
    return json.loads([ln["text"] for ln in cluster.api.logs(job, type="train")][-1])


def test_a_sweep_of_four_runs_with_the_right_values(cluster: Cluster) -> None:
    api = cluster.api
    r = api.client.post("/jobs", json={"trainer": "command", "command": [sys.executable, "-c", REPORTS, "0"],
                                       "gpus": 0, "sweep": {"LR": [0.0001, 0.0003], "RANK": [8, 16]}})
    assert r.status_code == 201, r.text
    made = r.json()
    parent, jobs = made["job_id"], made["jobs"]
    assert len(jobs) == 4 and "sweep of 4 jobs" in made["message"]
    assert [api.wait(j)["status"] for j in jobs] == ["succeeded"] * 4
    seen = [ran(cluster, j) for j in jobs]
    assert [(s["index"], s["lr"], s["rank"]) for s in seen] == [
        ("0", "0.0001", "8"), ("1", "0.0001", "16"), ("2", "0.0003", "8"), ("3", "0.0003", "16")]
    assert json.loads(seen[3]["sweep"]) == {"LR": 0.0003, "RANK": 16}
    listed = api.client.get("/jobs", params={"array": parent}).json()
    assert listed["total"] == 4 and {j["job_id"] for j in listed["jobs"]} == set(jobs)
    spec = api.client.get(f"/jobs/{jobs[1]}").json()["spec"]
    assert (spec["array_id"], spec["array_index"]) == (parent, 1)


def test_max_parallel_keeps_an_array_to_so_many_at_once(cluster: Cluster) -> None:
    api = cluster.api
    r = api.client.post("/jobs", json={"trainer": "command", "command": [sys.executable, "-c", REPORTS, "0.6"],
                                       "gpus": 0, "array": {"count": 3}, "max_parallel": 1})
    assert r.status_code == 201, r.text
    jobs = r.json()["jobs"]
    deadline = time.monotonic() + 10
    while "max_parallel" not in (api.status(jobs[2]).get("waiting_reason") or ""):
        assert time.monotonic() < deadline, api.status(jobs[2])
        time.sleep(0.05)
    assert [api.wait(j)["status"] for j in jobs] == ["succeeded"] * 3
    spans = sorted((s["began"], s["ended"]) for s in (ran(cluster, j) for j in jobs))
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans)), spans


def test_the_parent_id_stops_the_whole_array(cluster: Cluster) -> None:
    api = cluster.api
    made = cli(cluster, "submit", "--json", "--array", "3", "--", sys.executable, "-c", REPORTS, "60")
    assert made.returncode == 0, made.stderr
    answer = json.loads(made.stdout)
    parent, jobs = answer["job_id"], answer["jobs"]
    api.wait(jobs[0], statuses={"running"})
    r = api.client.post(f"/jobs/{parent}/stop", json={"grace_s": 2})
    assert r.status_code == 200 and r.json()["message"] == "stop sent to 3 of the array's 3 jobs", r.text
    assert {api.wait(j)["status"] for j in jobs} == {"stopped"}
    listed = cli(cluster, "list", "--array", parent)
    assert listed.returncode == 0 and all(j in listed.stdout for j in jobs), listed.stdout


def test_array_fields_only_trainyard_sets_and_sweeps_that_fit_nowhere_are_refused(cluster: Cluster) -> None:
    api = cluster.api
    for body, field in (({"array_id": "job_20261130_000000_abcdef"}, "array_id"),
                        ({"array": {"count": 2}, "sweep": {"A": [1]}}, "sweep"),
                        ({"max_parallel": 2}, "max_parallel"),
                        ({"array": {"count": 0}}, "array.count")):
        r = api.client.post("/jobs", json={"trainer": "command", "command": ["true"], **body})
        assert r.status_code == 422 and field in r.text, (body, r.text)


def test_each_child_of_a_sweep_is_checked_as_a_job_submitted_alone(cluster: Cluster) -> None:
    """A sweep value may land in a path or a flag: an operator cannot sweep a path outside the
    allowed roots into an hf script's --output_dir."""
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("operator", "sweeper")
    operator = Api(cluster.url, token)
    before = cluster.api.client.get("/jobs").json()["total"]
    try:
        r = operator.client.post("/jobs", json={
            "trainer": "hf", "script": str(TRAINERS / "tiny_hf.py"), "gpus": 0,
            "sweep": {"output_dir": ["out", "/etc/trainyard-sweep"]}})
        assert r.status_code in (403, 422) and "/etc/trainyard-sweep" in r.text, r.text
        assert cluster.api.client.get("/jobs").json()["total"] == before  # none of the sweep was made
    finally:
        operator.client.close()
