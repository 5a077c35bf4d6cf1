"""Secrets in a job's request are shown only to its submitter and admins (security review M5):
for anyone else `env` values and a webhook URL's credentials, query and fragment are redacted,
in every view that shows the request (detail, seed 000's detail, the job's events)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"


def may_see_secrets(role: str, user: str, owner: str) -> bool:
    return role == "admin" or (bool(owner) and user == owner)


def redacted_url(url: str) -> str:
    """The URL without what may carry a secret: userinfo, query and fragment."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    host = parts.hostname or ""
    netloc = (f"{REDACTED}@" if parts.username or parts.password else "") + host + (
        f":{parts.port}" if _port(parts) else "")
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "",
                       REDACTED if parts.fragment else ""))


def _port(parts: Any) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def redacted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A job request (as JSON) with its secrets redacted."""
    out = dict(spec)
    if isinstance(out.get("env"), dict):
        out["env"] = dict.fromkeys(out["env"], REDACTED)
    if isinstance(out.get("webhook_url"), str):
        out["webhook_url"] = redacted_url(out["webhook_url"])
    return out
