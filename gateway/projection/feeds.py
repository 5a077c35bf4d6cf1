"""The projector's side of the streams: its consumer per stream, pointed right after the
sequence DuckDB holds (the DuckDB file is the checkpoint, so a fresh file replays from the
start), and the retry with back-off that reading again and writing share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from shared.nats.pullfeed import PullFeed

log = logging.getLogger("trainyard.projector")

T = TypeVar("T")

# A failed step is tried again after this long, doubling up to the cap.
RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


async def reset_consumer(js: JetStreamContext, stream: str, consumer: str, start_seq: int) -> None:
    """Make this replica's consumer of `stream` afresh, delivering from `start_seq`."""
    config = ConsumerConfig(
        durable_name=consumer,
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        max_waiting=16,
    )
    for attempt in range(5):
        try:
            await js.delete_consumer(stream, consumer)
        except NotFoundError:
            pass
        try:
            await js.add_consumer(stream, config)
            return
        except APIError:  # made again meanwhile, from another start: delete that one too
            if attempt == 4:
                raise
            await asyncio.sleep(0.1)


async def open_feed(nc: Client, js: JetStreamContext, stream: str, consumer: str, start_seq: int,
                    batch: int) -> PullFeed:
    """A fresh consumer from `start_seq`, and a started feed on it."""
    await reset_consumer(js, stream, consumer, start_seq)
    feed = PullFeed(nc, stream, consumer, batch=batch)
    await feed.start()
    return feed


async def until_done(step: Callable[[], Awaitable[T]], doing: str, errors: dict[str, str], stream: str) -> T:
    """`step()`, tried again with back-off until it succeeds; meanwhile `errors[stream]` says
    why (/health shows it). `doing` names it in the log, with %s for the stream."""
    delay_s = RETRY_FIRST_S
    while True:
        try:
            result = await step()
        except Exception as exc:  # not CancelledError: a stop still stops
            if stream not in errors:
                log.error("projector: %s failed (%r); retrying with back-off", doing % stream, exc, exc_info=exc)
            errors[stream] = str(exc) or repr(exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RETRY_MAX_S)
            continue
        if errors.pop(stream, None) is not None:
            log.warning("projector: %s works again", doing % stream)
        return result
