"""The one place errors become HTTP responses (the main API's; seed 000's envelope is in
seed000.py): the service's errors, Litestar's own 4xx, and anything unexpected (500, logged)."""

from __future__ import annotations

import logging

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from gateway.errors import ServiceError

log = logging.getLogger("trainyard.gateway")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    detail: str
    field: str | None = None


def service_error_handler(_: Request, exc: ServiceError) -> Response[ErrorBody]:
    return Response(ErrorBody(exc.code, exc.detail, exc.field), status_code=exc.status_code)


def parameter_error(exc: HTTPException) -> tuple[str, str] | None:
    """(field, message) of Litestar's validation of a query or path parameter, or None."""
    extra = getattr(exc, "extra", None)
    if not isinstance(exc, ValidationException) or not isinstance(extra, list) or not extra:
        return None
    first = extra[0] if isinstance(extra[0], dict) else {}
    key, message = first.get("key"), first.get("message")
    if not isinstance(key, str) or not isinstance(message, str):
        return None
    return key, f"{key}: {message}"


def http_error_handler(_: Request, exc: HTTPException) -> Response[ErrorBody]:
    # Litestar's own 4xx (unknown route, wrong method, body too large, a bad parameter).
    parameter = parameter_error(exc)
    if parameter is not None:  # a parameter's value: 422 naming it, as for body fields
        return Response(ErrorBody("invalid_field", parameter[1], parameter[0]), status_code=422)
    code = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized",
            403: "forbidden"}.get(exc.status_code, "bad_request")
    return Response(ErrorBody(code, str(exc.detail)), status_code=exc.status_code,
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
