"""Code archives (`submit --workdir`): checked, then stored by content in the JetStream Object
Store that agents read them from (shared/workdir.py has the archive rules)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from gateway.errors import InvalidField, TooLarge, Unavailable
from shared import subjects
from shared.workdir import ArchiveRefused, check_archive, object_name


class StoredWorkdir(msgspec.Struct, kw_only=True):
    workdir: str  # give this as the job's `workdir`
    size: int
    stored: bool  # False: the same archive was there already


class Workdirs:
    def __init__(self, js: JetStreamContext, tmp_dir: Path, max_bytes: int) -> None:
        self.js = js
        self.tmp_dir = tmp_dir
        self.max_bytes = max_bytes

    async def store(self, body: AsyncIterator[bytes], declared_size: int | None) -> StoredWorkdir:
        """Take an upload (413 past `max_bytes`, before anything is kept), check it, store it."""
        if declared_size is not None and declared_size > self.max_bytes:
            raise TooLarge(self._too_large(declared_size))
        self.tmp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".tar.gz")
        path = Path(name)
        try:
            size = 0
            with os.fdopen(fd, "wb") as f:
                async for chunk in body:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise TooLarge(self._too_large(size, more=True))
                    f.write(chunk)
            if size == 0:
                raise InvalidField("the body is empty: send the .tar.gz archive (trainyard submit --workdir DIR)",
                                   field="workdir")
            try:
                ref = await asyncio.to_thread(check_archive, path)
            except ArchiveRefused as exc:
                raise InvalidField(f"workdir archive refused: {exc}", field="workdir") from None
            store = await self._bucket()
            if await self._exists(ref):
                return StoredWorkdir(workdir=ref, size=size, stored=False)
            with open(path, "rb") as f:
                await store.put(object_name(ref), f)
            return StoredWorkdir(workdir=ref, size=size, stored=True)
        finally:
            path.unlink(missing_ok=True)

    async def require(self, ref: str) -> None:
        """422 unless the archive `ref` is stored (a job naming one that is not would fail later)."""
        if not await self._exists(ref):
            raise InvalidField(f"workdir {ref} is not stored (never uploaded, or expired): upload it with "
                               "POST /api/v1/training/workdirs, or submit with --workdir DIR", field="workdir")

    async def _exists(self, ref: str) -> bool:
        store = await self._bucket()
        try:
            await store.get_info(object_name(ref))
        except NotFoundError:
            return False
        return True

    async def _bucket(self):  # -> ObjectStore
        try:
            return await self.js.object_store(subjects.WORKDIR_BUCKET)
        except NotFoundError:
            raise Unavailable("the code archive store is not there yet (the gateway is starting)") from None

    def _too_large(self, size: int, more: bool = False) -> str:
        return (f"workdir archive {'over' if more else 'of'} {size / 1024**2:.1f} MiB; at most "
                f"{self.max_bytes / 1024**2:.0f} MiB (setting workdir_max_bytes; leave big files out with .gitignore)")
