"""Commands the gateway sends to one host's agent on `ty.cmd.<host>.<verb>`."""

from __future__ import annotations

import msgspec

from shared.jobspec import JobRequest


class Command(msgspec.Struct, kw_only=True, tag_field="verb"):
    job_id: str
    attempt: int
    ts_s: float


class StartJob(Command, tag="start"):
    spec: JobRequest
    gpu_ids: list[int] = []
    # After this many seconds from `ts_s` the scheduler may have declared the attempt lost and
    # placed the job elsewhere (a host that was away reads its old commands when it returns):
    # the agent refuses a start this old instead of running a job twice. 0: no limit.
    valid_for_s: float = 0.0
    # A checkpoint to resume from (path or name; "latest": the trainer's most recent one).
    resume_from: str | None = None


class StopJob(Command, tag="stop"):
    force: bool = False
    grace_s: float = 30.0
    reason: str = ""  # said in the job's log when the stop begins (e.g. who preempted it)


class ExportJob(Command, tag="export"):
    """Run the trainer's export step on the host that holds the checkpoint."""

    export_id: str
    spec: JobRequest
    checkpoint: str


AnyCommand = StartJob | StopJob | ExportJob

_decoder = msgspec.json.Decoder(AnyCommand)


def decode_command(data: bytes) -> AnyCommand:
    return _decoder.decode(data)


def verb_of(command: Command) -> str:
    return type(command).__struct_config__.tag  # type: ignore[return-value]
