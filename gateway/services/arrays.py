"""Submitting an array or a sweep (gateway/scheduling/arrays.py expands it): each child is held
to the checks a job submitted alone meets, then submitted as one."""

from __future__ import annotations

import msgspec

from gateway.errors import InvalidField
from gateway.scheduling.arrays import ARRAY_ENV, ArrayError, expand
from gateway.services.submission import PathChecks, check_request
from shared.jobspec import JobRequest


def refuse_array_fields(spec: JobRequest) -> None:
    """What only trainyard sets, and what only an array means."""
    if spec.array_id is not None or spec.array_index is not None:
        raise InvalidField("array_id and array_index are set by trainyard on the jobs of an array", field="array_id")
    if spec.array is not None and spec.sweep:
        raise InvalidField("give array or sweep, not both", field="sweep")
    if spec.max_parallel is not None and spec.array is None and not spec.sweep:
        raise InvalidField("max_parallel applies to an array or a sweep", field="max_parallel")


def array_children(spec: JobRequest, parent_id: str, role: str, paths: PathChecks) -> list[JobRequest]:
    """The children, checked: a sweep value may land in a path field, an hf flag or a command's
    environment, so each child is checked as the request was (role-gated variables and flags,
    paths confined to the allowed roots). trainyard's own array variables are not the user's."""
    try:
        children = expand(spec, parent_id)
    except ArrayError as exc:
        raise InvalidField(str(exc), field=exc.field) from None
    for child in children:
        check_request(msgspec.structs.replace(child, env={k: v for k, v in child.env.items() if k not in ARRAY_ENV}),
                      role)
    return [paths.check(child) for child in children]
