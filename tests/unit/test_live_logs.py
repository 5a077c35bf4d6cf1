"""What a log follower may take from the projector's memory instead of a DuckDB query."""

from __future__ import annotations

from gateway.projection.live_logs import LIVE_BATCH_MAX_LINES, LiveLogs
from shared.events import LogBatch


def batch(first: int, texts: list[str], job: str = "job_a", attempt: int = 1) -> LogBatch:
    n = len(texts)
    return LogBatch.of_lines(job_id=job, attempt=attempt, ts_s=1.0, first_seq=first, line_ts_s=[1.0] * n,
                             stream=["stdout"] * n, level=["INFO"] * n, kind=["train"] * n, text=texts)


def texts(lines) -> list[str] | None:
    return None if lines is None else [line.text for line in lines]


def test_a_follower_gets_the_lines_after_what_it_examined() -> None:
    live = LiveLogs()
    live.announce(batch(3, ["d", "e", "f"]))
    assert texts(live.lines_after("job_a", 1, 2)) == ["d", "e", "f"]
    assert texts(live.lines_after("job_a", 1, 4)) == ["f"]
    assert [line.seq for line in live.lines_after("job_a", 1, 3)] == [4, 5]
    assert live.lines_after("job_a", 1, 5) is None, "nothing newer"


def test_a_gap_before_the_batch_in_memory_means_a_query() -> None:
    live = LiveLogs()
    live.announce(batch(10, ["k"]))
    assert live.lines_after("job_a", 1, 8) is None, "line 9 is not in memory"
    assert live.lines_after("job_a", 2, 9) is None, "another attempt"
    assert live.lines_after("job_b", 1, 9) is None, "another job"


def test_a_big_batch_is_left_to_duckdb_and_hides_the_older_one() -> None:
    live = LiveLogs()
    live.announce(batch(0, ["a"]))
    live.announce(batch(1, ["x"] * (LIVE_BATCH_MAX_LINES + 1)))
    assert live.lines_after("job_a", 1, 0) is None
    live.announce(batch(1 + LIVE_BATCH_MAX_LINES + 1, ["after"]))
    assert live.lines_after("job_a", 1, 0) is None, "the big batch is not in memory: query"


def test_the_last_committed_line_is_known_per_attempt() -> None:
    live = LiveLogs({"job_old": {1: 41}})  # as the projection held at start
    assert live.stored_through("job_old", 1) == 41
    assert live.stored_through("job_a", 1) == -1, "nothing committed"
    live.committed(batch(0, ["a", "b"]))
    live.committed(batch(2, ["c"]))
    assert live.stored_through("job_a", 1) == 2
    assert live.stored_through("job_a", 2) == -1
    live.announce(batch(3, ["d"]))
    live.deleted("job_a")
    assert live.stored_through("job_a", 1) == -1 and live.lines_after("job_a", 1, 2) is None
