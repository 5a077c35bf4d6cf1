"""Request parsing shared by the route sets: JSON bodies, list and time parameters, log filters."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from gateway.errors import BadRequest, InvalidField, field_of_validation_error
from gateway.read.queries import LEVELS, LOG_KINDS

MAX_QUERY_LIST = 50


def csv_list(value: str | None, what: str) -> list[str]:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    if len(items) > MAX_QUERY_LIST:
        raise InvalidField(f"at most {MAX_QUERY_LIST} values in {what}", field=what)
    return items


def since_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField("since must be epoch seconds or an ISO 8601 time", field="since") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


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


def log_filters(kind: str, level: str | None) -> tuple[str, str | None]:
    """(`type`, minimum level) of a log query, checked: 422 naming the parameter."""
    if kind not in (*LOG_KINDS, "all"):
        raise InvalidField(f"type must be one of {', '.join((*LOG_KINDS, 'all'))}", field="type")
    if level is not None and level.upper() not in LEVELS:
        raise InvalidField(f"level must be one of {', '.join(LEVELS)}", field="level")
    return kind, level.upper() if level else None
