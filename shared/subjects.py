"""Every stream, subject and consumer name in one place (DESIGN §2)."""

from __future__ import annotations

from typing import NamedTuple

CMD_STREAM = "TY_CMD"
JOB_STREAM = "TY_JOB"
LOG_STREAM = "TY_LOG"
HOST_STREAM = "TY_HOST"
LEASE_BUCKET = "ty_lease"
# Object Store of code archives (`submit --workdir`): the agent that runs an attempt unpacks one.
WORKDIR_BUCKET = "ty_workdirs"

EVENT_STREAMS = (JOB_STREAM, LOG_STREAM, HOST_STREAM)


def cmd(host: str, verb: str) -> str:
    return f"ty.cmd.{host}.{verb}"


def cmd_filter(host: str) -> str:
    return f"ty.cmd.{host}.>"


def job_event(job_id: str, event_type: str, host: str | None = None) -> str:
    """`ty.job.<job>.<type>` for the gateway's events; `ty.job.<job>.<type>.<host>` for an
    agent's, the only job subjects its NATS user may publish on (DESIGN §10): no host can
    submit, schedule, cancel or delete a job, and the projector takes from a host only the
    kinds of event a host sends (AGENT_EVENT_KINDS)."""
    return f"ty.job.{job_id}.{event_type}" if host is None else f"ty.job.{job_id}.{event_type}.{host}"


def job_log(job_id: str, host: str) -> str:
    return f"ty.log.{job_id}.{host}"


# What an agent reports about the jobs it runs (tags of shared.events). `lost`: a re-adopting
# agent found the attempt's keeper gone with no exit status recorded (the scheduler says it too,
# of a host that went silent).
AGENT_EVENT_KINDS = frozenset({
    "started", "exited", "refused", "lost", "progress", "metrics", "checkpoint", "export_finished", "agent_note",
    "anomaly",
})


class JobSubject(NamedTuple):
    job_id: str
    kind: str
    host: str | None  # the agent that sent it; None for the gateway


def parse_job_subject(subject: str) -> JobSubject | None:
    """The parts of a `ty.job.…` or `ty.log.…` subject; None for any other."""
    parts = subject.split(".")
    if len(parts) in (4, 5) and parts[:2] == ["ty", "job"]:
        return JobSubject(parts[2], parts[3], parts[4] if len(parts) == 5 else None)
    if len(parts) == 4 and parts[:2] == ["ty", "log"]:
        return JobSubject(parts[2], "logs", parts[3])
    return None


def control(event_type: str) -> str:
    """Scheduler control events; they live in the job stream, kept as long as the jobs."""
    return f"ty.ctl.scheduler.{event_type}"


# Core NATS (not stored): "run a scheduling pass now", answered by whichever gateway leads.
SCHEDULE_NOW = "ty.sched.process"


def host_event(host: str, event_type: str) -> str:
    return f"ty.host.{host}.{event_type}"


def agent_consumer(host: str) -> str:
    return f"agent_{host}"


def projector_consumer(replica: str, stream: str) -> str:
    return f"proj_{replica}_{stream.lower()}"


def host_files(host: str) -> str:
    """Core NATS requests to one host's agent about a job's files (list, read a chunk): not
    events, so no stream keeps them; the agent answers on the request's reply subject."""
    return f"ty.rpc.{host}.files"
