"""One way to connect to NATS, with reconnects that never give up."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
import nats
from nats.aio.client import Client

from shared.nats.auth import load_credentials
from shared.tls import client_context

log = logging.getLogger("trainyard.nats")
REFUSALS = 3


class NkeyIdentity(msgspec.Struct, frozen=True):
    """A joined host's NATS identity: its nkey seed (never sent anywhere) and its user's inbox."""

    seed: str
    inbox_prefix: str


async def connect(url: str, name: str, *, credentials: str = "", nkey: NkeyIdentity | None = None,
                  ca_file: str = "", refused: asyncio.Event | None = None, connect_timeout_s: float = 5.0) -> Client:
    """`url`: one nats-server, or several separated by commas (the nodes of a cluster: the
    client fails over between them, and learns the others from the one it reaches).
    `credentials`: a file from `trainyard up` / `natsauth.ensure_credentials` (user and
    password); `nkey`: a joined host's own key instead. Either way the connection uses that
    user's own inbox prefix. `ca_file`: TLS (tls:// URLs), trusting only this CA. `refused` is
    set when the server refuses the identity REFUSALS times in a row (a removed host): reconnects
    cannot help then, and the caller had better say so and end."""
    auth: dict[str, Any] = {}
    if credentials:
        cred = load_credentials(credentials)
        auth = {"user": cred.user, "password": cred.password, "inbox_prefix": cred.inbox_prefix}
    elif nkey is not None:
        auth = {"nkeys_seed_str": nkey.seed, "inbox_prefix": nkey.inbox_prefix}
    if ca_file:
        auth["tls"] = client_context(ca_file)

    async def on_disconnect() -> None:
        log.warning("%s: disconnected from NATS", name)

    refusals = 0

    async def on_reconnect() -> None:
        nonlocal refusals
        refusals = 0
        log.info("%s: reconnected to NATS", name)

    async def on_error(exc: Exception) -> None:
        nonlocal refusals
        log.warning("%s: NATS error: %s", name, exc)
        if is_refusal(exc):
            refusals += 1
            if refused is not None and refusals >= REFUSALS:
                refused.set()

    connecting = asyncio.ensure_future(nats.connect(
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
    ))
    if refused is None:
        return await connecting
    # nats-py retries a first connect forever too (max_reconnect_attempts=-1): a refused
    # identity must end that wait as well.
    said_no = asyncio.ensure_future(refused.wait())
    await asyncio.wait([connecting, said_no], return_when=asyncio.FIRST_COMPLETED)
    said_no.cancel()
    if not connecting.done():
        connecting.cancel()
        raise Refused(f"nats-server refused {name}'s credentials {REFUSALS} times")
    return connecting.result()


class Refused(Exception):
    """nats-server refuses these credentials (see `connect`'s `refused`)."""


def is_refusal(exc: BaseException) -> bool:
    """Whether nats-server refused the credentials (not a network fault)."""
    return isinstance(exc, Refused) or "authorization violation" in str(exc).lower()


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
