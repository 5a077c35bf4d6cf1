"""How a fact travels: the subject and `Nats-Msg-Id` of every event and command, derived from it.

Every publisher (the gateway's EventWriter, the agent's publisher) builds its message with
`envelope`, so a body never travels on another kind's subject, and the same fact always carries
the same id, `<job>:<attempt>:<kind>[:<unique>]` (DESIGN §2): a publish retried after a
reconnect is deduplicated by the server. `unique` tells apart facts of one kind that may happen
more than once per attempt (a log batch's first row, a stop's nonce, a webhook's try).
"""

from __future__ import annotations

import time
from typing import NamedTuple

from shared import events as ev
from shared import subjects
from shared.commands import Command, verb_of

Message = ev.JobEvent | Command | ev.SchedulerControl | ev.HostHeartbeat


class Envelope(NamedTuple):
    subject: str
    msg_id: str
    payload: bytes

    @property
    def headers(self) -> dict[str, str]:
        return {"Nats-Msg-Id": self.msg_id}


def msg_id(job_id: str, attempt: int, kind: str, unique: object = None) -> str:
    return f"{job_id}:{attempt}:{kind}" if unique is None else f"{job_id}:{attempt}:{kind}:{unique}"


def nonce() -> int:
    """A `unique` for a fact that may be asked for again (a stop, a retry): new each time,
    and unique across restarts."""
    return time.time_ns()


def envelope(message: Message, *, host: str | None = None, unique: object = None) -> Envelope:
    """The subject and id of `message`. `host`: the agent that sends a job event (its own
    subjects, DESIGN §10), or the host a command is for."""
    payload = ev.encode(message)
    if isinstance(message, ev.LogBatch):
        assert host is not None, "log batches come from an agent"
        return Envelope(subjects.job_log(message.job_id, host),
                        msg_id(message.job_id, message.attempt, "logs", unique), payload)
    if isinstance(message, ev.JobEvent):
        kind = ev.tag_of(type(message))
        return Envelope(subjects.job_event(message.job_id, kind, host),
                        msg_id(message.job_id, message.attempt, kind, unique), payload)
    if isinstance(message, Command):
        assert host is not None, "a command goes to one host"
        verb = verb_of(message)
        return Envelope(subjects.cmd(host, verb), msg_id(message.job_id, message.attempt, verb, unique), payload)
    if isinstance(message, ev.SchedulerControl):
        kind = ev.tag_of(type(message))
        return Envelope(subjects.control(kind), f"ctl:{kind}:{unique if unique is not None else nonce()}", payload)
    kind = ev.tag_of(type(message))
    return Envelope(subjects.host_event(message.host, kind),
                    f"{message.host}:{kind}:{unique if unique is not None else nonce()}", payload)

