"""A stolen agent credential reads nothing it does not need and cannot void the gateway's writes
(security review M1): no stream-wide reads (only the last message on its own subjects), no id
squatting on a gateway write, and no log lines replayed over stored ones."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats as nats_py
import pytest

from shared import events as ev
from shared import subjects
from shared.nats import auth as natsauth
from tests.conftest import Cluster

AGENT = natsauth.agent_user("test-host")  # the session cluster's agent


async def _as(cluster: Cluster, user: str, action: Callable[[Any], Awaitable[object]]) -> bool:
    """Whether `action(js)` succeeded for `user` (a denied request gets no answer in time)."""
    nc = await nats_py.connect(cluster.nats.url, **cluster.nats.stack.connect_options(user))
    try:
        async with asyncio.timeout(3):
            await action(nc.jetstream())
        return True
    except (TimeoutError, nats_py.errors.Error):
        return False
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def ran_here(cluster: Cluster) -> str:
    job = cluster.api.submit([sys.executable, "-c", "print('one'); print('two'); print('three')"])
    assert cluster.api.wait(job)["status"] == "succeeded"
    return job


def test_an_agent_reads_only_the_last_message_on_its_own_subjects(cluster: Cluster, ran_here: str) -> None:
    def run(user: str, action: Callable[[Any], Awaitable[object]]) -> bool:
        return asyncio.run(_as(cluster, user, action))

    assert run(AGENT, lambda js: js.get_last_msg(subjects.LOG_STREAM, subjects.job_log(ran_here, "test-host"),
                                                  direct=True))
    denied = {
        "a job event by sequence": lambda js: js.get_msg(subjects.JOB_STREAM, 1),
        "a log batch by sequence": lambda js: js.get_msg(subjects.LOG_STREAM, 1),
        "another host's log": lambda js: js.get_last_msg(subjects.LOG_STREAM, subjects.job_log(ran_here, "other"),
                                                         direct=True),
        "the submitted request": lambda js: js.get_last_msg(
            subjects.JOB_STREAM, subjects.job_event(ran_here, "submitted"), direct=True),
        "a command by sequence": lambda js: js.get_msg(subjects.CMD_STREAM, 1),
    }
    allowed = [what for what, action in denied.items() if run(AGENT, action)]
    assert allowed == []
    assert not run(natsauth.VIEWER_USER, lambda js: js.get_msg(subjects.CMD_STREAM, 1))


def test_a_squatted_message_id_does_not_void_a_gateway_write(cluster: Cluster) -> None:
    job = cluster.api.submit([sys.executable, "-c", "print('held')"], hold=True)
    assert cluster.api.status(job)["status"] == "pending"

    async def squat(js: Any) -> None:
        await js.publish(subjects.job_event(job, "agent_note", "test-host"), b"{}",
                         headers={"Nats-Msg-Id": f"{job}:0:cancelled"})

    assert asyncio.run(_as(cluster, AGENT, squat))
    r = cluster.api.client.delete(f"/queue/{job}")  # taken out of the queue: a `cancelled` event
    assert r.status_code == 200, r.text
    assert cluster.api.wait(job, timeout_s=10)["status"] == "stopped"


def test_log_lines_already_stored_are_not_stored_again(cluster: Cluster, ran_here: str) -> None:
    before = [(ln["seq"], ln["text"]) for ln in cluster.api.logs(ran_here)]
    forged = ev.LogBatch.of_lines(job_id=ran_here, attempt=1, ts_s=time.time(), first_seq=0, line_ts_s=[1.0] * 2,
                                  stream=["stdout"] * 2, level=["INFO"] * 2, kind=["train"] * 2,
                                  text=["FORGED", "FORGED"])

    async def replay(js: Any) -> None:
        await js.publish(subjects.job_log(ran_here, "test-host"), ev.encode(forged),
                         headers={"Nats-Msg-Id": f"forged-{time.time_ns()}"})

    assert asyncio.run(_as(cluster, AGENT, replay))
    probe = cluster.api.submit([sys.executable, "-c", "print('after')"])  # the log stream moved past it
    cluster.api.wait(probe)
    time.sleep(0.5)
    assert [(ln["seq"], ln["text"]) for ln in cluster.api.logs(ran_here)] == before


def test_only_the_gateway_asks_a_host_about_its_files_and_only_that_host_answers(cluster: Cluster,
                                                                                 ran_here: str) -> None:
    """ty.rpc.<host>.files (GET /jobs/{id}/files): another host's credentials can neither ask
    the question nor hear it (and so cannot answer for the host); a viewer cannot ask."""
    from shared.files_rpc import FilesRequest, reply_decoder, request_encoder

    cluster.nats.stack._ensure_agent_user("other")  # a second host's user, as up adds one
    question = request_encoder.encode(FilesRequest(op="list", job_id=ran_here))
    subject = subjects.host_files("test-host")

    async def ask(user: str) -> list[str] | None:
        nc = await nats_py.connect(cluster.nats.url, **cluster.nats.stack.connect_options(user))
        try:
            reply = await nc.request(subject, question, timeout=2)
            return [f.path for f in reply_decoder.decode(reply.data).files]
        except nats_py.errors.Error:  # a denied publish gets no answer
            return None
        finally:
            await nc.close()

    async def overhear() -> int:
        heard: list[object] = []
        impostor = await nats_py.connect(cluster.nats.url, **cluster.nats.stack.connect_options("agent-other"))
        async def hear(msg: object) -> None:
            heard.append(msg)

        await impostor.subscribe(subject, cb=hear)  # denied by the server
        await asyncio.sleep(0.3)
        await ask(natsauth.GATEWAY_USER)
        await asyncio.sleep(0.3)
        await impostor.close()
        return len(heard)

    assert "1/stdout.log" in (asyncio.run(ask(natsauth.GATEWAY_USER)) or [])
    assert asyncio.run(ask("agent-other")) is None
    assert asyncio.run(ask(natsauth.VIEWER_USER)) is None
    assert asyncio.run(overhear()) == 0
