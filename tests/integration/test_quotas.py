"""Quotas on a real stack (issue 20): a project's third job waits while two run, saying why,
and starts when one ends; quotas are set by admins only and survive as events."""

from __future__ import annotations

import sys
import time

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import Cluster, cli
from tests.harness import Api

SLEEP = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]


def third_waits(api: Api, jobs: list[str]) -> str:
    """Once the first two of `jobs` run, the third's waiting reason as soon as it names a quota."""
    for job in jobs[:2]:
        api.wait(job, statuses={"running"})
    deadline = time.monotonic() + 10
    while "quota" not in (reason := api.status(jobs[2]).get("waiting_reason") or ""):
        assert time.monotonic() < deadline, api.status(jobs[2])
        time.sleep(0.05)
    return reason


def test_a_quota_holds_the_third_job_until_one_ends(cluster: Cluster) -> None:
    api = cluster.api
    r = api.client.put("/quotas/project/quota-test", json={"max_running_jobs": 2})
    assert r.status_code == 200 and r.json()["max_running_jobs"] == 2, r.text
    jobs = [api.submit(SLEEP, project="quota-test", stop_grace_s=1) for _ in range(3)]
    try:
        reason = third_waits(api, jobs)
        assert reason == "project quota-test runs 2 of at most 2 jobs (quota)"
        assert api.status(jobs[2])["status"] == "queued"
        [shown] = [q for q in api.client.get("/quotas").json() if q["name"] == "quota-test"]
        assert (shown["running_jobs"], shown["max_running_jobs"]) == (2, 2)
        api.client.post(f"/jobs/{jobs[0]}/stop")
        assert api.wait(jobs[2], statuses={"running"}, timeout_s=20)["status"] == "running"
    finally:
        for job in jobs:
            api.client.post(f"/jobs/{job}/stop")
        api.client.put("/quotas/project/quota-test", json={})  # lifted: the session's other tests are free
    assert not [q for q in api.client.get("/quotas").json() if q["name"] == "quota-test"]


def test_only_an_admin_sets_a_quota_and_bad_ones_are_refused(cluster: Cluster) -> None:
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("operator", "quota-operator")
    operator = Api(cluster.url, token)
    try:
        assert operator.client.put("/quotas/user/quota-operator", json={"max_gpus": 99}).status_code == 403
        assert operator.client.get("/quotas").status_code == 200
    finally:
        operator.client.close()
    api = cluster.api
    for path, body, field in (("/quotas/team/x", {}, "kind"), ("/quotas/user/a%20b", {}, "name"),
                              ("/quotas/user/x", {"max_gpus": -1}, "max_gpus"),
                              ("/quotas/user/x", {"gpus": 1}, "gpus")):
        r = api.client.put(path, json=body)
        assert r.status_code in (400, 422) and field in r.text, (path, body, r.text)


def test_the_cli_sets_and_lists_quotas(cluster: Cluster) -> None:
    made = cli(cluster, "quota", "set", "user", "cli-quota", "--max-gpus", "4")
    assert made.returncode == 0 and "cli-quota" in made.stdout, made.stderr
    listed = cli(cluster, "quota")
    row = next(line for line in listed.stdout.splitlines() if "cli-quota" in line)
    assert "4" in row, listed.stdout
    assert cli(cluster, "quota", "set", "user", "cli-quota").returncode == 0  # no flags: lifted
    assert "cli-quota" not in cli(cluster, "quota").stdout


def test_a_users_quota_holds_their_third_job(cluster: Cluster) -> None:
    """The issue's words: a user's (a token name's) third job waits while two run."""
    token = TokenStore(cluster.data_dir / TOKENS_FILE).create("admin", "quota-alice")  # command jobs need admin
    alice = Api(cluster.url, token)
    api = cluster.api
    assert api.client.put("/quotas/user/quota-alice", json={"max_running_jobs": 2}).status_code == 200
    jobs = [alice.submit(SLEEP, stop_grace_s=1) for _ in range(3)]
    try:
        assert third_waits(alice, jobs) == "quota-alice runs 2 of at most 2 jobs (quota)"
        alice.client.post(f"/jobs/{jobs[1]}/stop")
        assert alice.wait(jobs[2], statuses={"running"}, timeout_s=20)["status"] == "running"
    finally:
        for job in jobs:
            api.client.post(f"/jobs/{job}/stop")
        api.client.put("/quotas/user/quota-alice", json={})
        alice.client.close()
