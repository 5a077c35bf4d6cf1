"""Admission: which event the projector applies, and which it keeps unapplied with a note.

This is the policy the NATS permissions rely on (DESIGN §10): a host publishes only on its own
subjects, so the subject is what the server vouches for. The body must be what its subject
says, a host may send only the kinds of event a host reports, and only on attempts placed on it."""

from __future__ import annotations

import msgspec

from gateway.projection.batch import JobItem
from shared import events as ev
from shared import subjects

# Subjects `ty.job.<id>.<kind>` whose events change a job's status (decoded in `prepare`).
LIFECYCLE_KINDS = frozenset(ev.tag_of(t) for t in ev.LIFECYCLE) | {"deleted", "webhook"}

# job -> attempt -> the host it was placed on: who may report on it.
AttemptHosts = dict[str, dict[int, str]]


def refusal(subject: subjects.JobSubject | None, event: ev.JobEvent | None) -> str | None:
    """Why an event may not be applied as its subject says, or None. The subject is what NATS
    permissions vouch for: a host publishes only on its own agent subjects, and only the kinds
    of event a host sends are taken from them; the body must be what the subject says."""
    if subject is None:
        return "not a job subject"
    if subject.host is not None and subject.kind not in subjects.AGENT_EVENT_KINDS:
        return f"host {subject.host} may not send {subject.kind} events"
    if event is not None and (ev.tag_of(type(event)) != subject.kind or event.job_id != subject.job_id):
        return (f"its body is a {ev.tag_of(type(event))} event of {event.job_id}, "
                f"its subject says {subject.kind} of {subject.job_id}")
    return None


def host_refusal(attempt_hosts: AttemptHosts, subject: subjects.JobSubject | None, event: ev.JobEvent) -> str | None:
    """A host reports (progress, metrics, checkpoints, notes, exports) only on attempts placed
    on it. Its `scheduled` event comes first in the same stream, so the placement is known."""
    if subject is None or subject.host is None:
        return None
    placed = attempt_hosts.get(event.job_id, {}).get(event.attempt)
    if placed == subject.host:
        return None
    return f"sent by host {subject.host}; attempt {event.attempt} was placed on {placed or 'no host'}"


def report_accepted(attempt_hosts: AttemptHosts, item: JobItem, event: ev.JobEvent) -> bool:
    """A report that is not a lifecycle event (those are checked as they evolve the job): its
    body must be what its subject says, and a host's on an attempt placed on that host.
    If not, the item is marked not applied, with why."""
    why = refusal(item.subject, event) or host_refusal(attempt_hosts, item.subject, event)
    if why is not None:
        item.applied, item.note = False, why
    return why is None


def decode_checked(attempt_hosts: AttemptHosts, item: JobItem) -> ev.JobEvent | None:
    """The event of an item `prepare` left to the writer (metrics, progress, checkpoints),
    not applied if its body is not what its subject says."""
    try:
        event = ev.decode_job_event(item.msg.data)
    except msgspec.DecodeError as exc:
        item.applied, item.note = False, f"undecodable: {exc}"
        return None
    report_accepted(attempt_hosts, item, event)
    return event
