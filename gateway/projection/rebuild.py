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
from shared.nats import provision
from shared.nats.connect import close_quietly, connect


async def rebuild(nats_url: str, out_path: Path, credentials: str = "", timeout_s: float = 600.0) -> dict[str, int]:
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; remove it or choose another --out")
    nc = await connect(nats_url, "projector-rebuild", credentials=credentials)
    js = nc.jetstream()
    await provision.ensure_streams(js)
    targets = {s: (await js.stream_info(s)).state.last_seq for s in subjects.EVENT_STREAMS}
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
