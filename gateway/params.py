"""Query-parameter parsing shared by the route sets."""

from __future__ import annotations

import datetime as dt

from gateway.errors import InvalidField

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
