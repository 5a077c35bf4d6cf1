"""Answers the gateway's questions about a job's files on this host (shared/files_rpc.py): a
listing of the job's dir (`<work-dir>/runs/<job>/`, every attempt's run dir) or a chunk of one
file in it. Nothing outside that dir is ever read: names are resolved (links too) and must stay
inside it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import subjects
from shared.files_rpc import CHUNK_BYTES, MAX_LISTED, FileEntry, FilesReply, FilesRequest, request_decoder
from shared.ids import is_valid_token

log = logging.getLogger("trainyard.agent.files")
_encoder = msgspec.msgpack.Encoder()


class FileServer:
    def __init__(self, nc: Client, host: str, runs_dir: Path) -> None:
        self.nc = nc
        self.host = host
        self.runs_dir = runs_dir
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.host_files(self.host), cb=self._handle)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection is going anyway
                pass

    async def _handle(self, msg: Msg) -> None:
        try:
            request = request_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            reply = FilesReply(error=f"bad request: {exc}")
        else:
            reply = await asyncio.to_thread(self.answer, request)
        try:
            await msg.respond(_encoder.encode(reply))
        except Exception as exc:  # the asker gave up (timeout) or the connection dropped
            log.warning("files: no answer sent: %s", exc)

    def answer(self, request: FilesRequest) -> FilesReply:
        if not is_valid_token(request.job_id):
            return FilesReply(error="job_id: not a job id")
        root = self.runs_dir / request.job_id
        if not root.is_dir():
            return FilesReply(missing=True, error=f"host {self.host} has no files of job {request.job_id}")
        if request.op == "list":
            return self._listing(root.resolve())
        return self._read(root.resolve(), request)

    def _listing(self, root: Path) -> FilesReply:
        found: list[FileEntry] = []
        for dirpath, dirnames, filenames in os.walk(root):  # links to directories are not followed
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    st = path.stat() if path.resolve().is_relative_to(root) else None
                except OSError:
                    continue
                if st is None:
                    continue  # a link out of the job's dir: not shown, never read
                found.append(FileEntry(path=path.relative_to(root).as_posix(), size=st.st_size, mtime_s=st.st_mtime))
        found.sort(key=lambda e: e.path)
        return FilesReply(files=found[:MAX_LISTED], truncated=len(found) > MAX_LISTED)

    def _read(self, root: Path, request: FilesRequest) -> FilesReply:
        name = request.path
        if not name or name.startswith("/") or ".." in Path(name).parts:
            return FilesReply(error=f"path {name!r}: give a path inside the job's dir, as the listing shows it")
        target = (root / name).resolve()
        if not target.is_relative_to(root):
            return FilesReply(error=f"path {name!r} leads outside the job's dir")
        if not target.is_file():
            return FilesReply(missing=True, error=f"job {request.job_id} has no file {name!r} on host {self.host}")
        length = max(0, min(request.length, CHUNK_BYTES))
        with open(target, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, request.offset))
            data = f.read(length)
        return FilesReply(size=size, data=data)
