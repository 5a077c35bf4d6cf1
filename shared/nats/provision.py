"""Create streams and buckets if missing, update them if their config drifted. Idempotent:
every process calls it at start."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from shared import subjects

MAX_MSG_BYTES = 8 * 1024 * 1024
DUPLICATE_WINDOW_S = 120.0


def _stream(name: str, filters: list[str], retention: RetentionPolicy, *, max_age_s: float | None = None,
            max_bytes: int | None = None, allow_direct: bool = False) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=filters, retention=retention, storage=StorageType.FILE, max_msg_size=MAX_MSG_BYTES,
        duplicate_window=DUPLICATE_WINDOW_S, max_age=max_age_s, max_bytes=max_bytes, discard=DiscardPolicy.OLD,
        allow_direct=allow_direct,
    )


def stream_configs(*, log_max_age_s: float, log_max_bytes: int) -> list[StreamConfig]:
    """The limits of the log stream are settings (GatewaySettings.log_max_*: their one home)."""
    return [
        _stream(subjects.CMD_STREAM, ["ty.cmd.>"], RetentionPolicy.WORK_QUEUE),
        # Direct get: an agent reads the last message on its own subjects, and only those.
        _stream(subjects.JOB_STREAM, ["ty.job.>", "ty.ctl.>"], RetentionPolicy.LIMITS, allow_direct=True),
        _stream(subjects.LOG_STREAM, ["ty.log.>"], RetentionPolicy.LIMITS, max_age_s=log_max_age_s,
                max_bytes=log_max_bytes, allow_direct=True),
        _stream(subjects.HOST_STREAM, ["ty.host.>"], RetentionPolicy.LIMITS, max_age_s=86400.0, allow_direct=True),
    ]


async def ensure_streams(js: JetStreamContext, *, log_max_age_s: float, log_max_bytes: int) -> None:
    """Only the gateway calls this, with its settings: an existing stream is updated to them."""
    for config in stream_configs(log_max_age_s=log_max_age_s, log_max_bytes=log_max_bytes):
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


async def ensure_lease_bucket(js: JetStreamContext, ttl_s: float = 10.0) -> None:
    try:
        await js.key_value(subjects.LEASE_BUCKET)
    except Exception:
        await js.create_key_value(
            KeyValueConfig(bucket=subjects.LEASE_BUCKET, ttl=ttl_s, storage=StorageType.FILE)
        )


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
