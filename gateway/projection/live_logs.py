"""Log lines for live followers, straight from the projector's decoded batches.

A follower of a job's log (SSE, `trainyard logs -f`) used to learn of a new line only once the
projector had committed it to DuckDB, and then read it back with a query: two steps of several
milliseconds each on the path from a trainer's first line to the user (DESIGN §9's budget).
Now the projector hands every small log batch to `LiveLogs` as soon as it has decoded it, before
the write, and a follower that has examined every line up to the batch's first takes the lines
from memory. GET /logs and SQL show a line once it is committed, a few milliseconds later; a
write that fails stops the projector, and its restart stores the same lines from the stream, so a
line a follower saw is never lost, only late in the table.

`LiveLogs` also knows, per attempt, the last line committed (loaded at start, then kept by the
projector: one integer per attempt). A follower compares it with the last line it examined, so
it queries DuckDB only when there is something to read, not on every batch of every job.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway import schemas as views
from shared import events as ev

# Batches up to this size are kept for followers: the latency-critical ones are a few lines.
# A bigger batch means a trainer printing fast, where the DuckDB path is as quick as needed.
LIVE_BATCH_MAX_LINES = 256
LIVE_BATCH_MAX_TEXT = 64 * 1024
# Attempts whose newest batch is kept (least recently written dropped first). Forgetting one is
# safe: its followers then read from DuckDB.
LIVE_ATTEMPTS = 256

Attempt = tuple[str, int]  # (job_id, attempt)


class LiveLogs:
    def __init__(self, stored: dict[str, dict[int, int]] | None = None) -> None:
        self._recent: OrderedDict[Attempt, ev.LogBatch] = OrderedDict()
        # job -> attempt -> the last line committed (as the projection held at start, then
        # kept up by `committed`).
        self._stored: dict[str, dict[int, int]] = stored or {}

    def announce(self, batch: ev.LogBatch) -> None:
        """A batch was decoded (it is not committed yet)."""
        key = (batch.job_id, batch.attempt)
        self._recent.pop(key, None)
        if batch.count <= LIVE_BATCH_MAX_LINES and len(batch.text) <= LIVE_BATCH_MAX_TEXT:
            self._recent[key] = batch
            if len(self._recent) > LIVE_ATTEMPTS:
                self._recent.popitem(last=False)

    def committed(self, batch: ev.LogBatch) -> None:
        """A batch is in DuckDB."""
        attempts = self._stored.setdefault(batch.job_id, {})
        attempts[batch.attempt] = max(batch.end_seq - 1, attempts.get(batch.attempt, -1))

    def deleted(self, job_id: str) -> None:
        """The job and its lines are gone from DuckDB."""
        self._stored.pop(job_id, None)
        for key in [key for key in self._recent if key[0] == job_id]:
            del self._recent[key]

    def lines_after(self, job_id: str, attempt: int, covered: int) -> list[views.LogLine] | None:
        """Every line of the attempt after `covered`, if the newest batch in memory starts at or
        before `covered + 1` (so nothing between is missing); None if it cannot say."""
        batch = self._recent.get((job_id, attempt))
        if batch is None:
            return None
        if batch.first_seq > covered + 1 or batch.end_seq - 1 <= covered:
            return None
        start = max(0, covered + 1 - batch.first_seq)
        columns = zip(batch.times(), ev.expand(batch.stream), ev.expand(batch.level), ev.expand(batch.kind),
                      batch.texts(), strict=False)
        return [
            views.LogLine(seq=batch.first_seq + i, attempt=attempt, ts_s=ts, stream=stream, level=level,
                          kind=kind, text=text)
            for i, (ts, stream, level, kind, text) in enumerate(columns) if i >= start
        ]

    def stored_through(self, job_id: str, attempt: int) -> int:
        """The last line of the attempt in DuckDB; -1 if none is."""
        return self._stored.get(job_id, {}).get(attempt, -1)
