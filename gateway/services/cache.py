"""Answers kept until what they were computed from changes (DESIGN §9: detail and list pages
at 2,000 req/s from one worker; a DuckDB round of ~6 queries per detail cannot do that).

Each answer is stored with the version it was computed at: for a job's detail, the stream
sequence of the last event applied for that job; for a list page, the job stream's applied
sequence. A request with the same version gets the stored answer; concurrent requests for a
missing one share a single computation. The projector's commit moves the versions, so an
answer is never staler than the projection itself.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class VersionedCache(Generic[T]):
    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: OrderedDict[Hashable, tuple[int, asyncio.Future[T]]] = OrderedDict()
        self._max = max_entries

    async def get(self, key: Hashable, version: int, compute: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.get(key)
        if entry is not None and entry[0] == version:
            self._entries.move_to_end(key)
            return await asyncio.shield(entry[1])
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._entries[key] = (version, future)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        try:
            future.set_result(await compute())
        except BaseException as exc:
            self._entries.pop(key, None)  # errors are not cached
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        return future.result()

    def drop(self, key: Hashable) -> None:
        self._entries.pop(key, None)
