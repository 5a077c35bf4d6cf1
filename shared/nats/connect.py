"""One way to connect to NATS, with reconnects that never give up."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client

from shared.nats.auth import load_credentials

log = logging.getLogger("trainyard.nats")


async def connect(url: str, name: str, *, credentials: str = "", connect_timeout_s: float = 5.0) -> Client:
    """`url`: one nats-server, or several separated by commas (the nodes of a cluster: the
    client fails over between them, and learns the others from the one it reaches).
    `credentials`: a file from `trainyard up` / `natsauth.ensure_credentials` (user and
    password); the connection then also uses that user's own inbox prefix."""
    auth: dict[str, str] = {}
    if credentials:
        cred = load_credentials(credentials)
        auth = {"user": cred.user, "password": cred.password, "inbox_prefix": cred.inbox_prefix}

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS", name)

    async def on_reconnect() -> None:
        log.info("%s: reconnected to NATS", name)

    async def on_error(exc: Exception) -> None:
        log.warning("%s: NATS error: %s", name, exc)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout_s,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        pending_size=64 * 1024 * 1024,
        **auth,
    )


async def close_quietly(nc: Client, timeout_s: float = 5.0) -> None:
    """Close at shutdown: flush what is pending, stop reconnecting, within `timeout_s`.

    Not `drain()`: when its wait for subscriptions times out (30 s by default), nats-py 2.x
    fails inside its own error handling and can leave the reconnect task running, so the
    process never exits (seen in the soak). Nothing here needs a drain: unacknowledged
    commands are redelivered and handled idempotently, and the projector keeps its own offsets.
    """
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: see shared/aio.py
            await nc.close()
    except Exception as exc:  # closing is best effort (a timeout too); the process is ending
        log.warning("NATS connection not closed cleanly: %s", exc)
