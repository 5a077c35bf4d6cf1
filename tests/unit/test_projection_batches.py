"""One batch of the job stream holding a job's whole life, as a replica replaying the stream
(or a gateway catching up after downtime) reads it."""

from pathlib import Path

from nats.aio.msg import Msg

from gateway.projection.projector import Projector
from gateway.projection.schema import open_db
from shared import events as ev
from shared import subjects
from shared.jobspec import CommandJob


def _msgs(events: list[ev.JobEvent]) -> list[Msg]:
    return [
        Msg(_client=None, subject=subjects.job_event(e.job_id, ev.tag_of(type(e))),  # type: ignore[arg-type]
            reply=f"$JS.ACK.{subjects.JOB_STREAM}.c.1.{seq}.{seq}.0.0", data=ev.encode(e))
        for seq, e in enumerate(events, start=1)
    ]


def test_a_job_submitted_and_deleted_in_one_batch_leaves_only_its_events(tmp_path: Path) -> None:
    """The writer made the job's row from the batch's states, where the deletion had already
    removed it: KeyError, and the replica retried that batch for ever (its job stream stuck);
    and the job's progress, written after the deletions, outlived them."""
    projector = Projector(open_db(str(tmp_path / "p.duckdb")), "r")
    spec = CommandJob(command=["true"])
    gone, kept = "job_20261201_104117_f9b39b", "job_20261201_104118_0a1b2c"
    events: list[ev.JobEvent] = [
        ev.JobSubmitted(job_id=gone, ts_s=1.0, spec=spec),
        ev.JobSubmitted(job_id=kept, ts_s=1.5, spec=spec),
        ev.JobProgress(job_id=gone, ts_s=1.7, step=5),
        ev.JobStopRequested(job_id=gone, ts_s=2.0),
        ev.JobDeleted(job_id=gone, ts_s=3.0),
    ]
    batch = projector.prepare(subjects.JOB_STREAM, _msgs(events))
    assert batch.deleted == [gone]
    projector.write(batch)
    projector._merge(batch)  # committed, as the projector goes on after a write
    con = projector.con
    assert con.execute("SELECT job_id, status FROM jobs").fetchall() == [(kept, "queued")]
    assert con.execute("SELECT job_id, type FROM job_events ORDER BY stream_seq").fetchall() == [
        (gone, "submitted"), (kept, "submitted"), (gone, "progress"), (gone, "stop_requested"), (gone, "deleted")]
    assert con.execute("SELECT count(*) FROM progress").fetchall() == [(0,)]  # nor its progress
    assert gone not in projector.latest_progress
    assert con.execute("SELECT last_seq FROM projector_offsets WHERE stream = ?",
                       [subjects.JOB_STREAM]).fetchall() == [(5,)]
