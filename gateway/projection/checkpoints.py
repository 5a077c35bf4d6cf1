"""Folding DuckDB's write-ahead log into the database file while the projection is idle.

DuckDB folds its WAL into the file when a commit finds the log past `checkpoint_threshold`
(64 MB here, schema.py): ~0.3 s during which that commit and every other one waits. Left to
itself, that fold lands in the middle of a burst, when someone is waiting for the lines: one
in five runs of bench.history's 100k lines became queryable 60 % later than the others. A fold
costs less the less the log holds, and nobody waits on one while nothing is being written. So
once the job and log streams have written nothing for `idle_s`, a log of `min_wal_bytes` or
more is folded then. Readers go on during a checkpoint (DuckDB does not block them); commits
wait for it, which while idle is nobody but a heartbeat batch. The automatic fold remains for
long bursts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb

log = logging.getLogger("trainyard.projector")

IDLE_S = 0.25
# A quarter of the automatic threshold: ~130k log lines, ~70 ms to fold.
MIN_WAL_BYTES = 16 << 20
# After a fold that failed (a full disk) or left the log as it was: the next try waits this long.
RETRY_AFTER_S = 60.0


def wal_path(con: duckdb.DuckDBPyConnection) -> str | None:
    """The WAL file of `con`'s database; None for an in-memory one."""
    # fetchall, not fetchone: a result left unread kept a transaction open on the shared
    # connection, which DuckDB counted as a write in progress: no fold, explicit or automatic,
    # went through while it was (the WAL grew past 170 MB in bench.history's runs).
    rows = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    return f"{rows[0][0]}.wal" if rows and rows[0][0] else None


class IdleCheckpoints:
    def __init__(self, con: duckdb.DuckDBPyConnection, *, idle_s: float = IDLE_S,
                 min_wal_bytes: int = MIN_WAL_BYTES) -> None:
        self._wal = wal_path(con)
        self._cursor = con.cursor()
        self._idle_s = idle_s
        self._min_wal_bytes = min_wal_bytes
        self._last_write_s = time.monotonic()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="projector-checkpoint")

    def wrote(self) -> None:
        """A batch someone may be waiting for was written (any thread)."""
        self._last_write_s = time.monotonic()

    def wal_bytes(self) -> int:
        try:
            return os.stat(self._wal).st_size if self._wal else 0
        except FileNotFoundError:
            return 0

    async def run(self) -> None:
        if self._wal is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            quiet_s = time.monotonic() - self._last_write_s
            if quiet_s < self._idle_s:
                await asyncio.sleep(self._idle_s - quiet_s)
                continue
            if self.wal_bytes() < self._min_wal_bytes:
                await asyncio.sleep(self._idle_s)
                continue
            try:
                await loop.run_in_executor(self._thread, self._fold)
            except duckdb.TransactionException:
                # "other write transactions active": a batch came in as the fold began. The
                # next quiet moment will do.
                await asyncio.sleep(self._idle_s)
                continue
            except duckdb.Error as exc:
                log.warning("folding the WAL while idle failed (%s); trying again in %.0f s", exc, RETRY_AFTER_S)
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            if self.wal_bytes() >= self._min_wal_bytes and time.monotonic() - self._last_write_s >= self._idle_s:
                # Not folded, and nothing was written meanwhile: DuckDB declined; no busy loop.
                await asyncio.sleep(RETRY_AFTER_S)

    def _fold(self) -> None:
        self._cursor.execute("CHECKPOINT").fetchall()

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._cursor.close()
