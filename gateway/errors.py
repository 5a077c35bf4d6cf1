"""The errors the gateway's services raise, each with its HTTP status; api/errors.py is the one
place they become responses. No Litestar here: services never import it."""

from __future__ import annotations

from typing import Any

import msgspec

from shared.jobstate import IllegalTransition, JobState, check


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class BadRequest(ServiceError):
    """The request cannot be understood."""


class InvalidField(ServiceError):
    """A field has a value the API does not accept."""

    status_code = 422
    code = "invalid_field"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request is valid but the job's state does not allow it."""

    status_code = 409
    code = "conflict"


class Forbidden(ServiceError):
    """The caller's role does not allow this (or the job is another operator's)."""

    status_code = 403
    code = "forbidden"


class TooLarge(ServiceError):
    """An upload over its cap (refused before anything is kept)."""

    status_code = 413
    code = "too_large"


class RangeNotSatisfiable(ServiceError):
    status_code = 416
    code = "range_not_satisfiable"


class Unavailable(ServiceError):
    """A part trainyard needs (NATS, the projector) is not answering."""

    status_code = 503
    code = "unavailable"


def field_of_validation_error(exc: msgspec.ValidationError) -> str | None:
    """msgspec says `... - at `$.config.lr``; the API names the field as `config.lr`."""
    text = str(exc)
    marker = " - at `$"
    if marker not in text:
        return None
    path = text.split(marker, 1)[1].rstrip("`")
    return path.lstrip(".") or None


_REQUIRED = object()


def decode_body(decoder: msgspec.json.Decoder, body: bytes, default: Any = _REQUIRED) -> Any:
    """A JSON body through `decoder`: 422 naming the field, 400 if it is not JSON. With a
    `default`, an empty body means the default."""
    if default is not _REQUIRED and not body.strip():
        return default
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidField(str(exc), field=field_of_validation_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not a JSON object: {exc}") from None
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None


def refuse_unless_allowed(state: JobState, event: Any) -> None:
    """409 in the state machine's own words if `event` cannot happen to the job now
    (shared/jobstate.py holds every such rule)."""
    try:
        check(state, event)
    except IllegalTransition as exc:
        raise Conflict(str(exc)) from None


def job_not_found(job_id: str, catching_up: str | None) -> ServiceError:
    """404 for a job that does not exist; 503 while the projection is still replaying the
    streams after a restart, when it may exist and simply not be shown yet."""
    if catching_up:
        return Unavailable(f"job {job_id!r} is not shown yet: the projection is {catching_up}; try again shortly")
    return NotFound(f"no job {job_id!r}")
