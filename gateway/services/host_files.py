"""A job's files, fetched from the agent of the host that ran it (shared/files_rpc.py): a listing,
or a file streamed chunk by chunk from any offset. A chunk that does not come (the agent was
restarting, a NATS node failed over) is asked for again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from gateway.errors import BadRequest, NotFound, Unavailable
from shared import subjects
from shared.files_rpc import FileEntry, FilesReply, FilesRequest, reply_decoder, request_encoder


class FileListing(msgspec.Struct, kw_only=True):
    job_id: str
    host: str
    files: list[FileEntry]  # path: `<attempt>/<path in that attempt's run dir>`
    truncated: bool


class HostFiles:
    def __init__(self, nc: Client, timeout_s: float = 10.0, tries: int = 4) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.tries = tries

    async def listing(self, host: str, job_id: str) -> FileListing:
        reply = await self._ask(host, FilesRequest(op="list", job_id=job_id))
        return FileListing(job_id=job_id, host=host, files=reply.files, truncated=reply.truncated)

    async def open(self, host: str, job_id: str, path: str, offset: int = 0,
                   end: int | None = None) -> tuple[int, AsyncIterator[bytes]]:
        """(the file's size, its bytes from `offset` up to `end` exclusive), the first chunk read
        before this returns: a missing file is a 404 before any body is sent."""
        first = await self._ask(host, FilesRequest(op="read", job_id=job_id, path=path, offset=offset))
        size = first.size
        stop = size if end is None else min(end, size)

        async def chunks() -> AsyncIterator[bytes]:
            at, data = offset, first.data
            while at < stop and data:
                data = data[: stop - at]
                yield data
                at += len(data)
                if at >= stop:
                    return
                data = (await self._ask(host, FilesRequest(op="read", job_id=job_id, path=path, offset=at))).data

        return size, chunks()

    async def _ask(self, host: str, request: FilesRequest) -> FilesReply:
        payload = request_encoder.encode(request)
        for attempt in range(self.tries):
            try:
                msg = await self.nc.request(subjects.host_files(host), payload, timeout=self.timeout_s)
                break
            except (TimeoutError, NatsTimeout, NoRespondersError):
                if attempt == self.tries - 1:
                    raise Unavailable(f"host {host}'s agent does not answer (offline?): its files cannot be "
                                      "read now") from None
                await asyncio.sleep(0.5 * (attempt + 1))
        reply = reply_decoder.decode(msg.data)
        if reply.missing:
            raise NotFound(reply.error)
        if reply.error:
            raise BadRequest(reply.error)
        return reply
