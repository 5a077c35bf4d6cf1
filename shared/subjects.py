"""Every stream, subject and consumer name in one place (DESIGN §2)."""

from __future__ import annotations

CMD_STREAM = "TY_CMD"
JOB_STREAM = "TY_JOB"
LOG_STREAM = "TY_LOG"
HOST_STREAM = "TY_HOST"
LEASE_BUCKET = "ty_lease"

EVENT_STREAMS = (JOB_STREAM, LOG_STREAM, HOST_STREAM)


def cmd(host: str, verb: str) -> str:
    return f"ty.cmd.{host}.{verb}"


def cmd_filter(host: str) -> str:
    return f"ty.cmd.{host}.>"


def job_event(job_id: str, event_type: str) -> str:
    return f"ty.job.{job_id}.{event_type}"


def job_log(job_id: str) -> str:
    return f"ty.log.{job_id}"


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
