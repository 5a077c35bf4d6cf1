"""Create streams and buckets if missing, update them if their config drifted. Idempotent:
every process calls it at start."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from shared import subjects

log = logging.getLogger("trainyard.nats")

MAX_MSG_BYTES = 8 * 1024 * 1024
DUPLICATE_WINDOW_S = 120.0


def _stream(name: str, filters: list[str], retention: RetentionPolicy, *, replicas: int,
            max_age_s: float | None = None, max_bytes: int | None = None, allow_direct: bool = False) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=filters, retention=retention, storage=StorageType.FILE, max_msg_size=MAX_MSG_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S, max_age=max_age_s, max_bytes=max_bytes, discard=DiscardPolicy.OLD,
        allow_direct=allow_direct, num_replicas=replicas,
    )


def stream_configs(*, log_max_age_s: float, log_max_bytes: int, replicas: int = 1) -> list[StreamConfig]:
    """The limits of the log stream and the replica count are settings (GatewaySettings: their
    one home)."""
    return [
        _stream(subjects.CMD_STREAM, ["ty.cmd.>"], RetentionPolicy.WORK_QUEUE, replicas=replicas),
        # Direct get: an agent reads the last message on its own subjects, and only those.
        _stream(subjects.JOB_STREAM, ["ty.job.>", "ty.ctl.>"], RetentionPolicy.LIMITS, replicas=replicas,
                allow_direct=True),
        _stream(subjects.LOG_STREAM, ["ty.log.>"], RetentionPolicy.LIMITS, replicas=replicas,
                max_age_s=log_max_age_s, max_bytes=log_max_bytes, allow_direct=True),
        _stream(subjects.HOST_STREAM, ["ty.host.>"], RetentionPolicy.LIMITS, replicas=replicas, max_age_s=86400.0,
                allow_direct=True),
    ]


async def ensure_streams(js: JetStreamContext, *, log_max_age_s: float, log_max_bytes: int,
                         replicas: int = 1) -> None:
    """Only the gateway calls this, with its settings: an existing stream is updated to them
    (a new replica count too: JetStream then copies the stream to the new peers in the
    background, or drops the extra copies)."""
    for config in stream_configs(log_max_age_s=log_max_age_s, log_max_bytes=log_max_bytes, replicas=replicas):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                continue
            except BadRequestError:
                pass  # created meanwhile by another process: fall through to update
        await js.update_stream(config)


async def when_jetstream_ready(step: Callable[[], Awaitable[None]], wait_s: float = 60.0) -> None:
    """Run `step`, again while JetStream is not ready yet (a cluster whose nodes are still
    electing a meta leader answers 503 or nothing at all), for up to `wait_s`; then its error."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await step()
            return
        except (APIError, NoRespondersError, TimeoutError) as exc:
            # A forming cluster also answers 404 and 400 for a moment (the stream it was just
            # asked to create is not yet known everywhere): anything but time running out is retried.
            if time.monotonic() > deadline:
                raise
            log.info("JetStream not ready (%s); trying again", exc)
            await asyncio.sleep(0.5)


async def ensure_all(js: JetStreamContext, *, log_max_age_s: float, log_max_bytes: int, replicas: int,
                     workdir_keep_s: float = 30 * 86400.0) -> None:
    """Every stream and the lease bucket (the gateway's start; a forming cluster may refuse
    either for a moment, so both go under one `when_jetstream_ready`)."""
    await ensure_streams(js, log_max_age_s=log_max_age_s, log_max_bytes=log_max_bytes, replicas=replicas)
    await ensure_lease_bucket(js, replicas=replicas)
    await ensure_workdir_bucket(js, replicas=replicas, keep_s=workdir_keep_s)


async def ensure_workdir_bucket(js: JetStreamContext, *, replicas: int = 1, keep_s: float = 30 * 86400.0) -> None:
    """Code archives of `submit --workdir`, kept `keep_s` (retries and resumes unpack them
    again); a job whose archive expired fails with that reason."""
    try:
        await js.object_store(subjects.WORKDIR_BUCKET)
    except NotFoundError:  # BucketNotFoundError
        await js.create_object_store(subjects.WORKDIR_BUCKET, ObjectStoreConfig(
            ttl=keep_s, storage=StorageType.FILE, replicas=replicas, description="trainyard code archives"))


async def ensure_lease_bucket(js: JetStreamContext, ttl_s: float = 10.0, replicas: int = 1) -> None:
    try:
        await js.key_value(subjects.LEASE_BUCKET)
    except Exception:
        await js.create_key_value(
            KeyValueConfig(bucket=subjects.LEASE_BUCKET, ttl=ttl_s, storage=StorageType.FILE, replicas=replicas)
        )
        return
    # An existing bucket is a stream (KV_<bucket>): its replica count follows the setting.
    info = await js.stream_info(f"KV_{subjects.LEASE_BUCKET}")
    if info.config.num_replicas != replicas:
        info.config.num_replicas = replicas
        await js.update_stream(info.config)


async def ensure_command_consumer(js: JetStreamContext, host: str) -> None:
    """The durable pull consumer one host's agent reads its commands from (the gateway makes
    it: agents may not create consumers)."""
    name = subjects.agent_consumer(host)
    try:
        await js.consumer_info(subjects.CMD_STREAM, name)
    except NotFoundError:
        await js.add_consumer(subjects.CMD_STREAM, ConsumerConfig(
            durable_name=name,
            filter_subject=subjects.cmd_filter(host),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=256,
        ))
