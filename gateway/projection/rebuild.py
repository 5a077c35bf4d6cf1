"""`trainyard projector rebuild`: replay the streams into a fresh DuckDB file.

The projection is disposable; this proves it. The live gateway keeps its own file; the rebuilt
one is written beside it, to be swapped in while the gateway is stopped.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from nats.js.errors import NotFoundError

from gateway.projection.projector import Projector
from gateway.projection.schema import open_db
from shared import subjects
from shared.nats.connect import close_quietly, connect


class StreamsMissing(Exception):
    """The NATS server holds no trainyard streams."""


async def rebuild(nats_url: str, out_path: Path, credentials: str = "", timeout_s: float = 600.0) -> dict[str, int]:
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; remove it or choose another --out")
    nc = await connect(nats_url, "projector-rebuild", credentials=credentials)
    js = nc.jetstream()
    # A reader: it never provisions, so the streams keep the limits the gateway set (an update
    # with default limits here once lifted TY_LOG's size cap until the next gateway start).
    targets = {}
    for stream in subjects.EVENT_STREAMS:
        try:
            targets[stream] = (await js.stream_info(stream)).state.last_seq
        except NotFoundError:
            await close_quietly(nc)
            raise StreamsMissing(f"NATS has no stream {stream}: no gateway ran there, nothing to rebuild") from None
    con = open_db(str(out_path))
    replica = f"rebuild_{secrets.token_hex(4)}"
    projector = Projector(con, replica)
    try:
        await projector.start(nc, js)
        for stream, seq in targets.items():
            if seq:
                await projector.wait_applied(stream, seq, timeout_s)
    finally:
        await projector.stop()
        for stream in subjects.EVENT_STREAMS:
            try:
                await js.delete_consumer(stream, subjects.projector_consumer(replica, stream))
            except NotFoundError:
                pass
        con.close()
        await close_quietly(nc)
    return targets


def run_rebuild(nats_url: str, out_path: Path, credentials: str = "") -> dict[str, int]:
    return asyncio.run(rebuild(nats_url, out_path, credentials))
