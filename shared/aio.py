"""asyncio helpers that behave the same on every Python trainyard supports (3.11+)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("trainyard.aio")


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set (True) or `timeout_s` passes (False).

    Not `asyncio.wait_for(event.wait(), t)`: on Python 3.11, when the waiting task is cancelled
    in the same loop tick as the event is set, `wait_for` returns normally and the cancellation
    is lost (CPython gh-86296, fixed by 3.12's rewrite). A loop built on it then never ends: the
    gateway's projector, fed a heartbeat as it was being stopped, kept its shutdown waiting
    until the watchdog killed it. `asyncio.timeout` keeps a cancellation a cancellation, and
    wraps no extra task around the wait."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], recancel_s: float = 0.5) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again any that is still
    running after `recancel_s`: a cancellation lost inside a library (the `wait_for` race above
    exists in more places than ours) must not turn a shutdown into a hang."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=recancel_s)
        for task in pending:
            log.warning("task %s outlived its cancellation; cancelling it again", task.get_name())
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # all ended: this only collects their errors
