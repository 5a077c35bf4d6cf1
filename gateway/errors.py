"""Domain errors the service raises, and the one place they become HTTP responses."""

from __future__ import annotations

import logging

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

log = logging.getLogger("trainyard.gateway")


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


class Unavailable(ServiceError):
    """A part trainyard needs (NATS, the projector) is not answering."""

    status_code = 503
    code = "unavailable"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    detail: str
    field: str | None = None


def field_of_validation_error(exc: msgspec.ValidationError) -> str | None:
    """msgspec says `... - at `$.config.lr``; the API names the field as `config.lr`."""
    text = str(exc)
    marker = " - at `$"
    if marker not in text:
        return None
    path = text.split(marker, 1)[1].rstrip("`")
    return path.lstrip(".") or None


def service_error_handler(_: Request, exc: ServiceError) -> Response[ErrorBody]:
    return Response(ErrorBody(exc.code, exc.detail, exc.field), status_code=exc.status_code)


def http_error_handler(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    # Litestar's own 4xx (unknown route, wrong method, body too large, bad query type).
    code = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized",
            403: "forbidden"}.get(exc.status_code, "bad_request")
    detail = exc.detail
    extra = getattr(exc, "extra", None)
    if extra:
        detail = f"{detail}: {extra}"
    return Response(ErrorBody(code, str(detail)), status_code=exc.status_code,
                    headers=getattr(exc, "headers", None))


def unexpected_error_handler(_: Request, exc: Exception) -> Response[ErrorBody]:
    log.exception("unexpected error", exc_info=exc)
    return Response(ErrorBody("internal", "internal error; see the gateway log"), status_code=500)


ERROR_RESPONSES = {
    400: "malformed body or parameter (`field` names it)",
    401: "no or unknown bearer token",
    403: "the token's role does not allow this (or the job is another operator's)",
    404: "no such job (or route)",
    409: "the job's state does not allow this",
    413: "body over 1 MiB",
    422: "a field's value is not accepted (`field` names it)",
    503: "NATS or the projector is not answering",
}


def document_errors(handlers: list) -> list:
    """Put the one error shape, with what each code means, in the OpenAPI of every route."""
    from litestar.openapi.datastructures import ResponseSpec

    for handler in handlers:
        documented = dict(handler.responses or {})
        for code, meaning in ERROR_RESPONSES.items():
            documented.setdefault(code, ResponseSpec(data_container=ErrorBody, description=meaning,
                                                     generate_examples=False))
        handler.responses = documented
    return handlers
