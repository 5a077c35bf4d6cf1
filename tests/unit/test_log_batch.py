"""The log batch as it travels from agent to projector (shared/events.py LogBatch): every line
comes out as it went in, and a batch whose parts disagree is refused, not half-stored."""

from __future__ import annotations

import msgspec
import pytest

from shared import events as ev


def make(texts: list[str], streams: list[str] | None = None, levels: list[str] | None = None,
         times: list[float] | None = None) -> ev.LogBatch:
    n = len(texts)
    return ev.LogBatch.of_lines(job_id="job_a", attempt=2, ts_s=9.0, first_seq=40, line_ts_s=times or [5.5] * n,
                                stream=streams or ["stdout"] * n, level=levels or ["INFO"] * n,
                                kind=["train"] * n, text=texts, stream_rows={"stdout": 44})


def roundtrip(batch: ev.LogBatch) -> ev.LogBatch:
    decoded = ev.decode_job_event(ev.encode(batch))
    assert isinstance(decoded, ev.LogBatch)
    return decoded


def test_lines_columns_and_runs_survive_the_trip() -> None:
    texts = ["", "  indented", "tab\there", "ünïcode ✓", "carriage\rreturn", "x" * 1_000_000, "last"]
    streams = ["stdout", "stdout", "stderr", "stderr", "stdout", "stdout", "system"]
    levels = ["INFO", "INFO", "ERROR", "ERROR", "ERROR", "INFO", "WARNING"]
    times = [1.25, 1.25, 1.25, 2.5, 2.5, 2.5, 3.0]
    got = roundtrip(make(texts, streams, levels, times))
    assert (got.first_seq, got.count, got.end_seq) == (40, 7, 47)
    assert got.texts() == texts
    assert ev.expand(got.stream) == streams and ev.expand(got.level) == levels
    assert got.times() == times
    assert got.stream == [("stdout", 2), ("stderr", 2), ("stdout", 2), ("system", 1)]
    assert got.stream_rows == {"stdout": 44}


def test_a_line_holding_a_newline_stays_one_line() -> None:
    got = roundtrip(make(["one\ntwo", "three"]))
    assert got.count == 2 and got.texts() == ["one two", "three"]


@pytest.mark.parametrize("change", [
    {"count": 3},                                   # more lines claimed than the text holds
    {"text": "a\nb\nc"},                            # more texts than lines
    {"level": [["INFO", 1]]},                       # runs that cover too few lines
    {"stream": [["stdout", 2], ["stderr", 0]]},     # an empty run
    {"count": 0, "text": ""},
])
def test_a_batch_whose_parts_disagree_is_refused(change: dict) -> None:
    raw = msgspec.json.decode(ev.encode(make(["a", "b"])))
    raw.update(change)
    with pytest.raises(msgspec.ValidationError):
        ev.decode_job_event(msgspec.json.encode(raw))


def test_the_progress_event_carries_exactly_the_progress_fields() -> None:
    """JobProgress spells out ev.Progress's fields (one Struct base only); they must agree."""
    event_fields = {f.name: (f.type, f.default) for f in msgspec.structs.fields(ev.JobProgress)}
    for f in ev.PROGRESS_FIELDS:
        assert event_fields[f.name] == (f.type, f.default), f.name
    reading = ev.Progress(step=3, total_steps=10, percent=30.0, estimated=True)
    assert ev.JobProgress.of("j", 1, 2.0, reading).progress() == reading
