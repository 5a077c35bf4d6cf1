"""Finding a job the API shows: the one lookup both services use."""

from __future__ import annotations

from gateway.errors import job_not_found
from gateway.projection.projector import Projector
from shared.ids import is_valid_token
from shared.jobstate import JobState


def shown_state(view: Projector, job_id: str) -> JobState:
    """The job as the API shows it (committed to the projection); 404 for no such job, 503 while
    the projection is still replaying the streams after a restart (it may exist)."""
    state = view.states.get(job_id) if is_valid_token(job_id) else None
    if state is None:
        raise job_not_found(job_id, view.catching_up())
    return state
