"""The spine end to end: REST -> JetStream -> agent -> trainer -> events -> DuckDB -> REST."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.conftest import Cluster, pid_alive, python_job


def test_job_runs_and_reports_logs_progress_and_metrics(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit(python_job("numbered.py", "500"), name="numbered")
    final = api.wait(job)
    assert final["status"] == "succeeded" and final["exit_code"] == 0
    lines = [ln for ln in api.logs(job) if ln["stream"] == "stdout"]
    assert [ln["text"] for ln in lines] == [f"line {i}" for i in range(500)]
    seqs = [ln["seq"] for ln in api.logs(job)]
    assert seqs == sorted(set(seqs)), "log sequence numbers are unique and ordered"
    progress = api.client.get(f"/jobs/{job}/progress").json()
    assert (progress["step"], progress["total_steps"], progress["percent"]) == (500, 500, 100.0)  # it succeeded
    assert progress["latest_metrics"]["loss"] == 1.0 / 491
    series = api.client.get(f"/jobs/{job}/metrics", params={"name": "loss"}).json()["series"]["loss"]
    assert [p["step"] for p in series] == list(range(0, 500, 10))
    events = [e["type"] for e in api.client.get(f"/jobs/{job}/events").json()]
    assert events[:3] == ["submitted", "scheduled", "started"] and events[-1] == "exited"
    detail = api.client.get(f"/jobs/{job}").json()
    assert detail["name"] == "numbered" and detail["host"] == cluster.host
    assert Path(detail["stdout_path"]).read_text().startswith("line 0\n")
    listed = api.client.get("/jobs", params={"status": "succeeded", "q": "numbered"}).json()
    assert job in [j["job_id"] for j in listed["jobs"]]


def test_big_line_redraws_traceback_and_unterminated_last_line(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit(python_job("edge_lines.py"))
    assert api.wait(job)["status"] == "succeeded"
    lines = api.logs(job)
    stdout = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
    assert stdout == ["first line", "x" * (1024 * 1024), "bar done", "the end without newline"]
    stderr = [(ln["text"], ln["level"]) for ln in lines if ln["stream"] == "stderr"]
    assert [lvl for _, lvl in stderr] == ["ERROR", "ERROR", "ERROR"]
    only_errors = api.logs(job, level="ERROR")
    assert {ln["stream"] for ln in only_errors} == {"stderr"}
    # stdout and stderr are two files: their interleaving is read order, but tail is always the
    # last lines by sequence.
    tail = api.logs(job, tail=2)
    assert [ln["seq"] for ln in tail] == [ln["seq"] for ln in lines][-2:]


def test_failed_job_records_exit_code_reason_and_last_lines(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit(python_job("fail.py"))
    final = api.wait(job)
    assert final["status"] == "failed" and final["exit_code"] == 3
    assert "exited with code 3" in final["reason"]
    detail = api.client.get(f"/jobs/{job}").json()
    assert "ERROR: out of patience" in detail["last_lines"]
    assert "working 39" in detail["last_lines"]


def test_missing_executable_fails_at_once_with_reason(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit(["definitely-not-a-trainer-xyz"])
    final = api.wait(job, timeout_s=10)
    assert final["status"] == "failed"
    assert final["reason"] == f"definitely-not-a-trainer-xyz not found on host {cluster.host}"


def test_graceful_stop_kills_a_child_that_ignores_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    api = cluster.api
    pid_file = tmp_path / "pids"
    job = api.submit(python_job("stubborn.py", str(pid_file)))
    api.wait(job, {"running"})
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    parent, child = map(int, pid_file.read_text().split())
    time.sleep(1.2)  # the agent snapshots descendants about once a second
    r = api.client.post(f"/jobs/{job}/stop", json={"force": False, "grace_s": 1})
    assert r.status_code == 200, r.text
    final = api.wait(job, timeout_s=15)
    assert final["status"] == "stopped"
    deadline = time.monotonic() + 5
    while (pid_alive(parent) or pid_alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(parent), "trainer survived the stop"
    assert not pid_alive(child), "the SIGTERM-ignoring child survived the stop"


def test_stop_graceful_and_force(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit(python_job("sleeper.py"))
    api.wait_progress(job)  # its SIGTERM handler is in place
    r = api.client.post(f"/jobs/{job}/stop", json={"force": False, "grace_s": 30})
    assert r.status_code == 200
    final = api.wait(job)
    assert final["status"] == "stopped" and final["exit_code"] == 0
    assert any("got SIGTERM" in ln["text"] for ln in api.logs(job))
    # Force: SIGKILL now; no body is needed for a plain stop (seed 002 sends none).
    job2 = api.submit(
        [
            sys.executable,
            "-c",
            "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(600)",
        ]
    )
    api.wait(job2, {"running"})
    assert api.client.post(f"/jobs/{job2}/stop", json={"force": True}).status_code == 200
    final2 = api.wait(job2, timeout_s=10)
    assert final2["status"] == "stopped" and final2["signal"] == 9
    # Stopping a finished job is a conflict.
    r = api.client.post(f"/jobs/{job2}/stop")
    assert r.status_code == 409 and "already ended" in r.json()["detail"]


def test_held_job_can_be_stopped_before_it_runs(cluster: Cluster) -> None:
    api = cluster.api
    job = api.submit([sys.executable, "-c", "print(1)"], hold=True)
    assert api.status(job)["status"] == "pending"
    r = api.client.post(f"/jobs/{job}/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopped"


def test_bad_input_gets_named_errors_never_500(cluster: Cluster) -> None:
    c = cluster.api.client
    cases = [
        (b"not json", 400, None),
        (b"[]", 422, None),
        (b'{"command": ["x"]}', 422, "trainer"),
        (b'{"trainer": "nope", "command": ["x"]}', 422, "trainer"),
        (b'{"trainer": "command"}', 422, None),
        (b'{"trainer": "command", "command": []}', 422, "command"),
        (b'{"trainer": "command", "command": ["x"], "priority": 11}', 422, "priority"),
        (b'{"trainer": "command", "command": ["x"], "bogus": 1}', 422, None),
        (b'{"trainer": "command", "command": ["x"], "env": {"1BAD": "v"}}', 422, None),
        (b'{"trainer": "command", "command": ["x"], "cwd": "/etc"}', 422, "cwd"),
        (b'{"trainer": "command", "command": ["x"], "host": "Bad Host!"}', 422, "host"),
        (b'{"trainer": "command", "command": ["x"], "gpus": -1}', 422, "gpus"),
    ]
    for body, code, field in cases:
        r = c.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == code, (body, r.status_code, r.text)
        if field:
            assert r.json().get("field") == field or field in r.json()["detail"], (body, r.text)
    assert c.post("/jobs", content=b"{" + b" " * (2 * 1024 * 1024) + b"}").status_code == 413
    assert c.get("/jobs/no_such_job/status").status_code == 404
    assert c.get("/jobs/../../etc/passwd").status_code == 404
    assert c.get("/jobs/NOT%20A%20TOKEN/logs").status_code == 404
    assert c.post("/jobs/no_such_job/stop").status_code == 404
    bad_limit = c.get("/jobs", params={"limit": 0})  # a parameter's value: 422 naming it (security L1)
    assert bad_limit.status_code == 422 and bad_limit.json()["field"] == "limit"
    assert c.get("/jobs", params={"status": "weird"}).status_code == 422
    job = cluster.api.submit([sys.executable, "-c", "print(1)"])
    assert c.get(f"/jobs/{job}/logs", params={"level": "LOUD"}).status_code == 422
    assert c.post(f"/jobs/{job}/stop", json={"grace_s": -1}).status_code == 422


def test_auth_is_required(cluster: Cluster) -> None:
    import httpx

    anon = httpx.Client(base_url=f"{cluster.url}/api/v1/training")
    assert anon.get("/jobs").status_code == 401
    assert anon.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anon.get("/health").status_code == 200
    health = anon.get("/health").json()
    assert health["status"] == "ok" and health["nats"] == "connected"


def test_log_and_progress_streams_follow_a_job_until_it_ends(cluster: Cluster) -> None:
    script = ("import time\n"
              "for i in range(20):\n"
              "    print(f'line {i}', flush=True)\n"
              "    print('@trainyard {\"step\": %d, \"total_steps\": 20}' % (i + 1), flush=True)\n"
              "    time.sleep(0.05)\n")
    job = cluster.api.submit([sys.executable, "-c", script])
    events = cluster.api.sse_events(f"/jobs/{job}/logs/stream?type=train")
    logs = [json.loads(d) for e, _, d in events if e == "log"]
    assert [ln["text"] for ln in logs] == [f"line {i}" for i in range(20)]
    assert events[-1][:1] == ("end",) and events[-1][2] == "succeeded"
    # Reconnecting with Last-Event-ID gets exactly the lines after it.
    resumed = cluster.api.sse_events(f"/jobs/{job}/logs/stream?type=train", {"Last-Event-ID": str(logs[14]["seq"])})
    assert [json.loads(d)["text"] for e, _, d in resumed if e == "log"] == [f"line {i}" for i in range(15, 20)]
    progress = cluster.api.sse_events(f"/jobs/{job}/progress/stream")
    assert progress[-1][0] == "end" and json.loads(progress[-2][2])["step"] == 20
    assert cluster.api.client.get(f"/jobs/{job}/logs/stream", params={"level": "LOUD"}).status_code == 422


def test_read_only_sql_over_the_projection(cluster: Cluster) -> None:
    job = cluster.api.submit(python_job("numbered.py", "30"))
    cluster.api.wait(job)
    sql = cluster.api.client.post
    r = sql(f"{cluster.url}/api/v1/sql", json={
        "sql": f"SELECT count(*) AS n, min(seq) AS first FROM logs WHERE job_id = '{job}' AND stream = 'stdout'"})
    assert r.status_code == 200, r.text
    assert r.json()["columns"] == ["n", "first"] and r.json()["rows"][0][0] == 30
    capped = sql(f"{cluster.url}/api/v1/sql", json={"sql": "SELECT * FROM range(50)", "limit": 10}).json()
    assert capped["row_count"] == 10 and capped["truncated"] is True
    for statement in ("DELETE FROM jobs", "DROP TABLE logs", "SELECT 1; DELETE FROM jobs",
                      "INSERT INTO jobs SELECT * FROM jobs", "COPY jobs TO '/tmp/out.csv'",
                      "ATTACH '/tmp/other.duckdb'", "SET enable_external_access = true"):
        r = sql(f"{cluster.url}/api/v1/sql", json={"sql": statement})
        assert r.status_code == 422 and r.json()["field"] == "sql", (statement, r.text)
    for reading_files in ("SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM read_csv('/etc/passwd')"):
        r = sql(f"{cluster.url}/api/v1/sql", json={"sql": reading_files})
        assert r.status_code == 422 and "disabled" in r.json()["detail"], r.text
    slow = sql(f"{cluster.url}/api/v1/sql", json={
        "sql": "SELECT count(*) FROM range(100000000000) a", "timeout_s": 0.5})
    assert slow.status_code == 400 and slow.json()["field"] == "timeout_s"
    assert sql(f"{cluster.url}/api/v1/sql", json={"sql": "SELECT 1 AS one"}).json()["rows"] == [[1]]


def test_sql_needs_the_admin_role_and_new_tokens_work_without_a_restart(cluster: Cluster) -> None:
    for role, code in (("viewer", 403), ("operator", 403), ("admin", 200)):
        token = TokenStore(cluster.data_dir / TOKENS_FILE).create(role)
        r = httpx.post(f"{cluster.url}/api/v1/sql", json={"sql": "SELECT 1"},
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == code, (role, r.text)
    assert httpx.post(f"{cluster.url}/api/v1/sql", json={"sql": "SELECT 1"}).status_code == 401


def test_operators_act_on_their_own_jobs_and_admins_on_any(cluster: Cluster) -> None:
    store = TokenStore(cluster.data_dir / TOKENS_FILE)
    alice, bob = store.create("operator", "alice"), store.create("operator", "bob")

    def as_(token: str) -> httpx.Client:
        return httpx.Client(base_url=f"{cluster.url}/api/v1/training", headers={"Authorization": f"Bearer {token}"})

    # Operators cannot submit `command` jobs (admin only); a swift job stands in (no GPU here: it waits).
    r = as_(alice).post("/jobs", json={"trainer": "swift", "model_path": "m", "data_path": "d"})
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert cluster.api.client.get(f"/jobs/{job}").json()["status"] == "queued"
    refused = as_(bob).post(f"/jobs/{job}/stop", json={"force": True})
    assert refused.status_code == 403 and "alice" in refused.json()["detail"]
    assert as_(bob).delete(f"/queue/{job}").status_code == 403
    assert as_(alice).delete(f"/queue/{job}").status_code == 200
    assert as_(bob).delete(f"/jobs/{job}").status_code == 403
    assert cluster.api.client.delete(f"/jobs/{job}").status_code == 204  # the admin may


def test_list_pages_by_cursor_newest_first(cluster: Cluster) -> None:
    made = [cluster.api.submit([sys.executable, "-c", "pass"], name="paged") for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"q": "paged", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = cluster.api.client.get("/jobs", params=params).json()
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:5] == list(reversed(made))
    assert cluster.api.client.get("/jobs", params={"cursor": "nonsense"}).status_code in (400, 422)


def test_followers_that_hang_up_mid_wait_do_not_stall_the_projection(cluster: Cluster) -> None:
    """`trainyard logs -f` stopped with Ctrl-C, many times, while jobs overlap: each follower is
    torn down mid-wait by the server. Under an asyncio.Condition that once left the projector's
    lock held (or its job stream's follower gone): later jobs stayed invisible (404) and hosts
    looked silent. Every job must stay visible and every follower get its line."""
    api = cluster.api
    trainer = [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(0.5)"]
    jobs = []
    for _ in range(40):
        job = api.submit(trainer)
        jobs.append(job)
        with api.client.stream("GET", f"/jobs/{job}/logs/stream", params={"type": "train"}, timeout=10) as r:
            assert r.status_code == 200, f"{job}: {r.read()!r}"
            assert any('"text":"hello"' in line for line in r.iter_lines() if line.startswith("data:"))
    for job in jobs:
        assert api.wait(job)["status"] == "succeeded"
    assert api.client.get("/health").json()["projector"] == "ok"
