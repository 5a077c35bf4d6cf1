"""Query parameters shared by the route sets: lists, times, log filters (JSON bodies: errors.decode_body)."""

from __future__ import annotations

import datetime as dt
import math

from gateway.errors import InvalidField
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
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or abs(seconds) > 1e11:
            raise InvalidField("since must be a finite time (epoch seconds or ISO 8601)", field="since")
        return seconds
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidField("since must be epoch seconds or an ISO 8601 time", field="since") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def log_filters(kind: str, level: str | None) -> tuple[str, str | None]:
    """(`type`, minimum level) of a log query, checked: 422 naming the parameter."""
    if kind not in (*LOG_KINDS, "all"):
        raise InvalidField(f"type must be one of {', '.join((*LOG_KINDS, 'all'))}", field="type")
    if level is not None and level.upper() not in LEVELS:
        raise InvalidField(f"level must be one of {', '.join(LEVELS)}", field="level")
    return kind, level.upper() if level else None
