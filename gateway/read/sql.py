"""Read-only SQL over the projection, for analytics (`POST /api/v1/sql`, admin only).

A write is impossible by construction, not by recognising it:
- the user's text runs only as a subquery, `SELECT * FROM (<text>) AS user_query`, where DuckDB
  accepts no statement but a query: DDL, SET, PRAGMA, EXPLAIN ANALYZE do not parse there, and a
  data-modifying CTE is refused by the binder below the top level;
- DuckDB's parser must see exactly one statement, a SELECT, in the text alone (no `;` escape);
- it runs in a transaction that is always rolled back;
- the database's configuration is locked and its external access off (schema.py), so a query
  cannot change a setting or touch a file.
Each query runs on its own cursor with a statement timeout (DuckDB interrupts it), and its answer
is capped in rows and in bytes; the answer says when it was cut.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import duckdb
import msgspec

from gateway.errors import BadRequest, InvalidField

ALLOWED = {duckdb.StatementType.SELECT}
# An answer stops growing past this many bytes of JSON (rows beyond it are cut, `truncated`).
MAX_RESULT_BYTES = 8 << 20
FETCH_ROWS = 256


class SqlRequest(msgspec.Struct, forbid_unknown_fields=True):
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=20_000)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 10.0


class SqlResult(msgspec.Struct, kw_only=True):
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    elapsed_ms: float


class SqlRunner:
    def __init__(self, con: duckdb.DuckDBPyConnection, workers: int = 2) -> None:
        self._con = con
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="sql")
        self._slots = asyncio.Semaphore(workers)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def check(sql: str) -> None:
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise InvalidField(f"not valid SQL: {exc}", field="sql") from None
        if len(statements) != 1:
            raise InvalidField(f"one statement per request, not {len(statements)}", field="sql")
        if statements[0].type not in ALLOWED:
            raise InvalidField(f"only queries (SELECT, WITH ... SELECT, FROM, VALUES) are allowed here, not "
                               f"{statements[0].type.name}", field="sql")

    async def run(self, req: SqlRequest) -> SqlResult:
        self.check(req.sql)
        async with self._slots:
            cursor = self._con.cursor()
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool, self._execute, cursor, req)
            try:
                async with asyncio.timeout(req.timeout_s):  # not wait_for: see shared/aio.py
                    return await asyncio.shield(future)
            except TimeoutError:
                cursor.interrupt()
                await asyncio.gather(future, return_exceptions=True)
                raise BadRequest(f"the query ran past its {req.timeout_s:g}s statement timeout and "
                                 "was interrupted", field="timeout_s") from None
            finally:
                cursor.close()

    @staticmethod
    def _execute(cursor: duckdb.DuckDBPyConnection, req: SqlRequest) -> SqlResult:
        started = time.perf_counter()
        cursor.execute("BEGIN TRANSACTION")
        try:
            # The newline ends a trailing `-- comment` before the closing parenthesis.
            cursor.execute(f"SELECT * FROM (\n{req.sql}\n) AS user_query")
            description = cursor.description or []
            rows, truncated = _fetch_capped(cursor, req.limit)
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise InvalidField(str(exc).splitlines()[0], field="sql") from None
        finally:
            cursor.execute("ROLLBACK")
        return SqlResult(
            columns=[d[0] for d in description], types=[str(d[1]) for d in description],
            rows=[list(r) for r in rows], row_count=len(rows), truncated=truncated,
            elapsed_ms=round((time.perf_counter() - started) * 1e3, 2),
        )


def _fetch_capped(cursor: duckdb.DuckDBPyConnection, limit: int) -> tuple[list[Any], bool]:
    """Up to `limit` rows and MAX_RESULT_BYTES of JSON; and whether the answer was cut."""
    rows: list[Any] = []
    size = 0
    while len(rows) <= limit:
        chunk = cursor.fetchmany(min(FETCH_ROWS, limit + 1 - len(rows)))
        if not chunk:
            return rows, False
        for row in chunk:
            size += len(msgspec.json.encode(list(row), enc_hook=str))
            if size > MAX_RESULT_BYTES or len(rows) == limit:
                return rows, True
            rows.append(row)
    return rows, True


def encode_result(result: SqlResult) -> bytes:
    """Query values may be any DuckDB type: what JSON has no type for is sent as text."""
    return msgspec.json.encode(result, enc_hook=str)
