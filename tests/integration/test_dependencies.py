"""Jobs that wait for other jobs (issue 20, dependencies), on a real stack."""

from __future__ import annotations

import json
import sys
import time

from tests.conftest import Cluster, cli


def waiting_reason(cluster: Cluster, job: str) -> str:
    return cluster.api.status(job).get("waiting_reason") or ""


def test_a_job_starts_after_the_job_it_depends_on_succeeds(cluster: Cluster) -> None:
    api = cluster.api
    first = api.submit([sys.executable, "-c", "import time; time.sleep(1.5); print('first')"])
    second = api.submit([sys.executable, "-c", "print('second')"], depends_on=[first])
    deadline = time.monotonic() + 10
    while f"waiting for {first} to succeed" not in waiting_reason(cluster, second):
        assert time.monotonic() < deadline, api.status(second)
        time.sleep(0.05)
    assert api.status(second)["status"] == "queued"
    assert api.wait(second, timeout_s=30)["status"] == "succeeded"
    assert api.status(first)["finished_s"] <= api.status(second)["started_s"]


def test_a_job_whose_dependency_fails_is_not_run_unless_it_waits_for_any_end(cluster: Cluster) -> None:
    api = cluster.api
    failing = api.submit([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(2)"])
    after_ok = api.submit([sys.executable, "-c", "print('never')"], depends_on=[failing])
    after_any = api.submit([sys.executable, "-c", "print('cleanup')"], depends_on=[failing],
                           depends_mode="any_end")
    assert api.wait(failing)["status"] == "failed"
    final = api.wait(after_ok)
    assert final["status"] == "stopped" and final["reason"] == f"not run: it depends on {failing}, which ended failed"
    assert final["started_s"] is None
    assert api.wait(after_any)["status"] == "succeeded"


def test_unknown_or_repeated_dependencies_are_refused(cluster: Cluster) -> None:
    api = cluster.api
    for after, why in ((["job_20200101_000000_abcdef"], "no job job_20200101_000000_abcdef"),
                       (["not-a-job"], "depends_on"),):
        r = api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "depends_on": after})
        assert r.status_code == 422 and r.json()["field"] == "depends_on[0]" and why in r.text, r.text
    real = api.submit(["true"])
    r = api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "depends_on": [real, real]})
    assert r.status_code == 422 and r.json()["field"] == "depends_on[1]" and "named twice" in r.text, r.text


def test_the_cli_submits_after_another_job(cluster: Cluster) -> None:
    first = cluster.api.submit([sys.executable, "-c", "print(1)"])
    made = cli(cluster, "submit", "--json", "--after", first, "--", sys.executable, "-c", "print(2)")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    assert cluster.api.wait(job)["status"] == "succeeded"
    assert cluster.api.client.get(f"/jobs/{job}").json()["spec"]["depends_on"] == [first]
