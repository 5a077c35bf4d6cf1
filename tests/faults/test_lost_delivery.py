"""A delivery lost between NATS and the projector (issue 16's node loss showed one: a gateway's
log consumer missed a batch while the stream's leader moved). The projector's consumers do not
ack, so such a batch is never sent again by itself; the projector must see the gap in the
stream sequences and read again from what it has applied. Simulated here by replacing the
projector's consumer with one that starts 40 messages further on while a trainer prints."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from shared import subjects
from tests.harness import Rig, check_lines, paced, started_rig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with started_rig(tmp_path_factory.mktemp("lost-delivery"), {"l": "2x80GB"}) as rig:
        yield rig


async def skip_ahead(rig: Rig, stream: str, by: int) -> int:
    nc = await nats.connect(rig.nats_url, **rig.stack.connect_options())
    try:
        js = nc.jetstream()
        name = subjects.projector_consumer("g1", stream)
        delivered = (await js.consumer_info(stream, name)).delivered.stream_seq
        config = ConsumerConfig(durable_name=name, ack_policy=AckPolicy.NONE, max_waiting=16,
                                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=delivered + by)
        for _ in range(10):
            # The projector, seeing its consumer deleted, may make it again first: then again.
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(stream, name)
            try:
                await js.add_consumer(stream, config)
                return delivered
            except APIError:
                await asyncio.sleep(0.05)
        raise AssertionError("could not replace the projector's consumer")
    finally:
        await nc.close()


@pytest.mark.parametrize("stream", [subjects.LOG_STREAM, subjects.JOB_STREAM])
def test_a_skipped_delivery_is_read_again(rig: Rig, stream: str, tmp_path: Path) -> None:
    job = rig.api.submit(paced(3000, 8.0))
    rig.api.wait(job, statuses={"running"})
    time.sleep(2)
    asyncio.run(skip_ahead(rig, stream, 40))
    assert rig.api.wait(job, timeout_s=60)["status"] == "succeeded"
    deadline = time.monotonic() + 20
    while not (lines := check_lines(rig.api, job, 3000)).exact:
        assert time.monotonic() < deadline, lines
        time.sleep(0.5)
    assert rig.api.client.get("/health").json()["projector"] == "ok"
    assert "reading again" in (rig.data_dir / "logs" / "gateway.log").read_text()


async def delete_consumer(rig: Rig, stream: str) -> None:
    nc = await nats.connect(rig.nats_url, **rig.stack.connect_options())
    try:
        await nc.jetstream().delete_consumer(stream, subjects.projector_consumer("g1", stream))
    finally:
        await nc.close()


def test_reading_again_waits_for_a_cluster_that_does_not_answer_yet(rig: Rig) -> None:
    """The projector must make its consumer again after a reconnect or a leader change, when the
    cluster may not answer for seconds (a 3-node cluster with a node restarting showed it: the
    projector gave up on the first timeout and its projection froze for good). Here its consumer
    goes away while the gateway is paused, and NATS is paused before the gateway goes on: its
    first tries to make the consumer again time out."""
    job = rig.api.submit(paced(3000, 8.0))
    rig.api.wait(job, statuses={"running"})
    time.sleep(1)
    gateway, server = rig.procs["gateway"], rig.procs["nats"]
    gateway.send_signal(signal.SIGSTOP)
    try:
        asyncio.run(delete_consumer(rig, subjects.LOG_STREAM))  # it learns it as soon as it runs again
        server.send_signal(signal.SIGSTOP)
        gateway.send_signal(signal.SIGCONT)
        time.sleep(8)  # longer than a JetStream API request waits (5 s): at least one try fails
    finally:
        server.send_signal(signal.SIGCONT)
        gateway.send_signal(signal.SIGCONT)
    assert rig.api.wait(job, timeout_s=60)["status"] == "succeeded"
    deadline = time.monotonic() + 20
    while not (lines := check_lines(rig.api, job, 3000)).exact:
        assert time.monotonic() < deadline, (lines, rig.api.client.get("/health").json())
        time.sleep(0.5)
    rig.wait_healthy()
    assert "reading TY_LOG again failed" in (rig.data_dir / "logs" / "gateway.log").read_text()
