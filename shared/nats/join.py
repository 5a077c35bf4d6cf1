"""One-time join tokens: `trainyard host add NAME` issues one; the host's agent redeems it through
a gateway with the public half of an nkey it made itself, and becomes NATS user agent-NAME.

A token is kept only as its SHA-256 (`join-tokens/<hash>.json`), names the host it is for, expires
(default 1 h) and is deleted when used: a second use, an expired token, or another host's name is
refused, and nothing is created.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path

import msgspec

from shared.ids import check_token
from shared.nats import users
from shared.paths import write_private

DEFAULT_TTL_S = 3600.0


class JoinTicket(msgspec.Struct, kw_only=True):
    host: str
    expires_s: float
    replace: bool = False


class JoinRefused(Exception):
    """Why a join was refused; `status` is the HTTP status the gateway answers with."""

    def __init__(self, reason: str, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class HostAlreadyJoined(Exception):
    pass


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_dir(nats_dir: Path) -> Path:
    return nats_dir / "join-tokens"


def issue(nats_dir: Path, host: str, ttl_s: float = DEFAULT_TTL_S, replace: bool = False) -> str:
    """A new join token for `host` (refused for a host that joined already, unless `replace`)."""
    check_token(host, "host")
    if users.joined_host(nats_dir, host) is not None and not replace:
        raise HostAlreadyJoined(f"host {host!r} has joined already; give --replace to give it a new identity "
                                "(its current one stops working when the new one joins)")
    token = secrets.token_urlsafe(32)
    folder = tokens_dir(nats_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ticket = JoinTicket(host=host, expires_s=time.time() + ttl_s, replace=replace)
    write_private(folder / f"{token_hash(token)}.json", msgspec.json.encode(ticket))
    return token


def redeem(nats_dir: Path, token: str, host: str, nkey: str) -> users.HostIdentity:
    """Join `host` with public user nkey `nkey` if `token` allows it; every running nats-server
    has the new user when this returns."""
    if not users.valid_user_nkey(nkey):
        raise JoinRefused("nkey: not a public user nkey (56 characters starting with U)", 422)
    path = tokens_dir(nats_dir) / f"{token_hash(token)}.json"
    with users.changing(nats_dir):
        try:
            ticket = msgspec.json.decode(path.read_bytes(), type=JoinTicket)
        except (FileNotFoundError, msgspec.DecodeError):
            raise JoinRefused("the join token is unknown or was used already; ask an admin for a new one "
                              "(trainyard host add)") from None
        if ticket.expires_s < time.time():
            path.unlink(missing_ok=True)
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ticket.expires_s))
            raise JoinRefused(f"the join token expired at {when}; ask an admin for a new one (trainyard host add)")
        if ticket.host != host:
            raise JoinRefused(f"the join token is for host {ticket.host!r}, not {host!r}")
        if users.joined_host(nats_dir, host) is not None and not ticket.replace:
            raise JoinRefused(f"host {host!r} has joined already", 409)
        identity = users.HostIdentity(host=host, nkey=nkey, joined_s=time.time())
        users.write_host(nats_dir, identity)
        path.unlink()
        users.apply(nats_dir)
    return identity


def remove(nats_dir: Path, host: str) -> bool:
    """Revoke `host`'s identity (and its unused tokens): the servers reload and close its
    connection. False if it had none."""
    with users.changing(nats_dir):
        for ticket_path in tokens_dir(nats_dir).glob("*.json") if tokens_dir(nats_dir).is_dir() else []:
            try:
                if msgspec.json.decode(ticket_path.read_bytes(), type=JoinTicket).host == host:
                    ticket_path.unlink()
            except (OSError, msgspec.DecodeError):
                continue
        removed = users.forget_host(nats_dir, host)
        if removed:
            users.apply(nats_dir)
    return removed
