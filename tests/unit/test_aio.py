"""shared/aio.py: waits and cancellations that end the way the caller asked, on Python 3.11 too."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shared.aio import cancel_and_wait, wait_set


async def test_wait_set_says_whether_the_event_came_or_the_time_ran_out() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5.0) is True
    assert await wait_set(asyncio.Event(), 0.01) is False


async def test_a_loop_cancelled_as_its_event_is_set_ends() -> None:
    """The race that hung gateway shutdowns: the projector's feed woken by a message in the same
    tick as stop() cancels it. `asyncio.wait_for` on 3.11 drops that cancellation and the loop
    goes round again, forever."""
    event = asyncio.Event()
    rounds = 0

    async def follow() -> None:
        nonlocal rounds
        while True:
            event.clear()
            await wait_set(event, 5.0)
            rounds += 1

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.01)  # waiting now
    event.set()
    task.cancel()
    for _ in range(5):  # messages keep coming, as heartbeats do
        await asyncio.sleep(0.01)
        event.set()
    assert task.cancelled(), f"the loop went on for {rounds} more rounds"
    assert rounds == 0


async def test_cancel_and_wait_ends_a_task_that_lost_its_first_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # as a library that swallowed it would
        await asyncio.sleep(60)

    async def fails() -> None:
        raise RuntimeError("already broken")

    tasks = [asyncio.create_task(stubborn(), name="stubborn"), asyncio.create_task(fails())]
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="trainyard.aio"):
        async with asyncio.timeout(5):
            await cancel_and_wait(tasks, recancel_s=0.05)
    assert tasks[0].cancelled()
    assert isinstance(tasks[1].exception(), RuntimeError)
    assert "stubborn outlived its cancellation" in caplog.text


def test_a_skipped_stream_sequence_is_seen() -> None:
    """pullfeed.skipped_after: the projector's test for a delivery lost in a reconnect."""
    from nats.aio.msg import Msg

    from shared.nats.pullfeed import skipped_after

    def msgs(*seqs: int) -> list[Msg]:
        return [Msg(_client=None, subject="ty.log.x.h", reply=f"$JS.ACK.TY_LOG.c.1.{s}.{s}.0.0")  # type: ignore[arg-type]
                for s in seqs]

    assert skipped_after(10, msgs(11, 12, 13)) is None
    assert skipped_after(10, msgs(9, 10, 11)) is None  # repeats are not a skip
    assert skipped_after(10, []) is None
    assert skipped_after(10, msgs(12, 13)) == "jumped from 10 to 12"
    assert skipped_after(10, msgs(11, 13)) == "jumped from 11 to 13"
