"""API tokens: `Authorization: Bearer <token>`, roles viewer < operator < admin.

Tokens are stored hashed (SHA-256) in `<data-dir>/tokens.json`; comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from shared.paths import write_private

ROLES = ("viewer", "operator", "admin")
TOKENS_FILE = "tokens.json"
ADMIN_TOKEN_FILE = "api-token"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# How often a request with a known token looks whether the token file changed: every request
# (a stat, microseconds), so a revoked token fails on the next one.
RECHECK_S = 0.0
# The name of the token `trainyard up` makes; no other token may take it.
ADMIN_NAME = "admin"


class TokenNameTaken(ValueError):
    """Token names are who submitted a job (ownership): one token per name."""


class TokenStore:
    """The token file, re-read when it changes: `trainyard token create` works on a running
    gateway."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._roles: dict[str, str] = {}
        self._names: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -RECHECK_S
        self._reload()

    def _reload(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < RECHECK_S:
            return
        self._checked_at = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._roles, self._names, self._stamp = {}, {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._roles, self._names = {}, {}
            for digest, entry in json.loads(self.path.read_text()).items():
                # Older files hold just the role; a token without a name is known by its hash.
                role, name = (entry, digest[:8]) if isinstance(entry, str) else (entry.get("role"), entry.get("name"))
                if role in ROLES:
                    self._roles[digest], self._names[digest] = role, name or digest[:8]
            self._stamp = stamp

    def __bool__(self) -> bool:
        return bool(self._roles)

    def role_of(self, token: str) -> str | None:
        found = self.identity_of(token)
        return found[0] if found else None

    def identity_of(self, token: str) -> tuple[str, str] | None:
        """(role, name) of a token, or None. A token not known yet makes the file be looked
        at again at once: `trainyard token create` works on the next request."""
        self._reload(force=False)
        digest = _hash(token)
        found = self._find(digest)
        if found is None:
            self._reload()
            found = self._find(digest)
        return (self._roles[found], self._names[found]) if found else None

    def _find(self, digest: str) -> str | None:
        found = None
        for known in self._roles:  # look at every entry: no early exit
            if hmac.compare_digest(known, digest):
                found = known
        return found

    def create(self, role: str, name: str | None = None, *, _first_admin: bool = False) -> str:
        """A new token; TokenNameTaken if `name` is held already or is the reserved `admin`."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        self._reload()
        if name == ADMIN_NAME and not _first_admin:
            raise TokenNameTaken(f"the name {ADMIN_NAME!r} is reserved for the token `trainyard up` made")
        if name is not None and name in self._names.values():
            raise TokenNameTaken(f"a token named {name!r} exists; revoke it first (trainyard token revoke "
                                 f"{name}) or choose another name")
        token = f"ty_{secrets.token_urlsafe(32)}"
        digest = _hash(token)
        self._roles[digest], self._names[digest] = role, name or f"{role}-{digest[:6]}"
        self._write()
        return token

    def entries(self) -> list[tuple[str, str]]:
        """(name, role) of every token, by name."""
        self._reload()
        return sorted((self._names[d], r) for d, r in self._roles.items())

    def revoke(self, name: str) -> int:
        """Remove the tokens named `name`; how many there were. The gateway refuses them on the
        next request."""
        self._reload()
        gone = [d for d, n in self._names.items() if n == name]
        for digest in gone:
            del self._roles[digest], self._names[digest]
        if gone:
            self._write()
        return len(gone)

    def _write(self) -> None:
        entries = {d: {"role": r, "name": self._names[d]} for d, r in self._roles.items()}
        write_private(self.path, json.dumps(entries, indent=1).encode())


def ensure_admin_token(data_dir: Path) -> str:
    """First run: create an admin token in `<data-dir>/api-token` (0600). Later runs reuse it."""
    token_file = data_dir / ADMIN_TOKEN_FILE
    if token_file.is_file():
        return token_file.read_text().strip()
    token = TokenStore(data_dir / TOKENS_FILE).create("admin", ADMIN_NAME, _first_admin=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def caller_role(connection: ASGIConnection) -> str:
    return str(connection.scope.get("state", {}).get("role", "admin"))


def caller_name(connection: ASGIConnection) -> str:
    return str(connection.scope.get("state", {}).get("user", "local"))


def make_auth_guard(store: TokenStore | None):
    """A guard factory: `requires(role)` checks the bearer token (or nothing when insecure)."""

    def requires(role: str):
        needed = ROLES.index(role)

        # async, though it never awaits: Litestar runs a sync guard in a worker thread, a thread
        # hop on every request (a quarter of the requests/s one gateway serves).
        async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
            if store is None:  # --insecure on loopback
                connection.scope.setdefault("state", {}).update(role="admin", user="local")
                return
            header = connection.headers.get("authorization", "")
            scheme, _sep, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)",
                                             headers={"WWW-Authenticate": "Bearer"})
            identity = store.identity_of(token.strip())
            if identity is None:
                raise NotAuthorizedException("invalid token", headers={"WWW-Authenticate": "Bearer"})
            have, name = identity
            if ROLES.index(have) < needed:
                raise PermissionDeniedException(f"this needs the {role} role; the token is {have}")
            connection.scope.setdefault("state", {}).update(role=have, user=name)

        return guard

    return requires
