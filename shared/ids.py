"""Job and host identifiers.

Both become NATS subject tokens, so they are restricted to lowercase ASCII letters, digits,
`-` and `_`; user text never becomes a subject token.
"""

from __future__ import annotations

import re
import secrets
import time

TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class InvalidIdentifier(ValueError):
    """An identifier that cannot be used as a subject token."""


def is_valid_token(value: str) -> bool:
    return bool(TOKEN_RE.match(value))


def check_token(value: str, what: str) -> str:
    if not isinstance(value, str) or not TOKEN_RE.match(value):
        raise InvalidIdentifier(
            f"{what} must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
        )
    return value


def new_job_id() -> str:
    """`job_YYYYMMDD_HHMMSS_xxxxxx`: sortable by submit time, unique by its random tail."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    return f"job_{stamp}_{secrets.token_hex(3)}"
