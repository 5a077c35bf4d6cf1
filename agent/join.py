"""A host joins: the agent makes its own nkey, checks the gateway's CA against the pin it was
given, and sends the join token with the public half of the key (shared/nats/join.py redeems
it). The seed and the CA stay in `<work-dir>/identity/` (mode 0600), so the agent reconnects
after a restart without the token, which was good for one use only."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import httpx
import msgspec
import nkeys

from shared import tls
from shared.config import AgentSettings
from shared.nats.auth import agent_user
from shared.nats.connect import NkeyIdentity
from shared.nats.join import token_hash
from shared.paths import private_dir, write_private

JOIN_PATH = "/api/v1/training/hosts/join"
CA_PATH = "/api/v1/training/join/ca.pem"


class JoinFailed(Exception):
    pass


class Joined(msgspec.Struct, kw_only=True):
    host: str
    token_hash: str  # the token this identity came from: the same join command run again is a no-op
    api_url: str


def nats_identity(settings: AgentSettings, work_dir: Path, host: str) -> tuple[NkeyIdentity | None, str]:
    """(the nkey to connect with, or None for password credentials; the CA file for TLS, or "").
    Joins first when given a token this work dir has not joined with yet."""
    folder = work_dir / "identity"
    if settings.join_token:
        joined = _read_joined(folder)
        if joined is None or joined.host != host or joined.token_hash != token_hash(settings.join_token):
            _join(settings, private_dir(folder), host)
    ca_file = settings.nats_ca or (str(folder / tls.CA_FILE) if (folder / tls.CA_FILE).exists() else "")
    seed_path = folder / "nkey.seed"
    if settings.nats_credentials or not seed_path.exists():
        return None, ca_file
    joined = _read_joined(folder)
    if joined is not None and joined.host != host:
        raise JoinFailed(f"this work dir joined as host {joined.host!r}, not {host!r}; give another --work-dir")
    return NkeyIdentity(seed=seed_path.read_text().strip(), inbox_prefix=f"_INBOX_{agent_user(host)}"), ca_file


def _read_joined(folder: Path) -> Joined | None:
    try:
        return msgspec.json.decode((folder / "joined.json").read_bytes(), type=Joined)
    except (OSError, msgspec.DecodeError):
        return None


def _join(settings: AgentSettings, folder: Path, host: str) -> None:
    if not settings.api_url:
        raise JoinFailed("--join needs --api-url (the gateway that takes the token)")
    api = settings.api_url.rstrip("/")
    verify: ssl.SSLContext | bool = True
    if settings.ca_pin:
        ca_pem = _fetch_ca(api)
        try:
            shown = tls.ca_pin(ca_pem)
        except ValueError:
            shown = "(not a certificate)"
        if shown != settings.ca_pin:
            raise JoinFailed(f"the gateway at {api} shows CA {shown}, not the pinned {settings.ca_pin}: "
                             "refusing to join (is this the right address?)")
        write_private(folder / tls.CA_FILE, ca_pem)
        verify = tls.client_context(folder / tls.CA_FILE)
    elif api.startswith("https://"):
        raise JoinFailed("an https gateway needs --ca-pin (trainyard host add prints it)")
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    try:
        resp = httpx.post(f"{api}{JOIN_PATH}", json={"token": settings.join_token, "host": host, "nkey": public},
                          verify=verify, timeout=30.0)
    except httpx.HTTPError as exc:
        raise JoinFailed(f"cannot reach the gateway at {api}: {exc}") from None
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail") or resp.text
        except ValueError:
            detail = resp.text
        raise JoinFailed(f"join refused ({resp.status_code}): {detail}")
    write_private(folder / "nkey.seed", seed + b"\n")
    write_private(folder / "joined.json", msgspec.json.encode(
        Joined(host=host, token_hash=token_hash(settings.join_token), api_url=api)))


def _fetch_ca(api: str) -> bytes:
    """The CA certificate, over a connection not yet verified: the pin checks what came."""
    try:
        resp = httpx.get(f"{api}{CA_PATH}", verify=False, timeout=10.0)
    except httpx.HTTPError as exc:
        raise JoinFailed(f"cannot reach the gateway at {api}: {exc}") from None
    if resp.status_code != 200:
        raise JoinFailed(f"the gateway at {api} has no CA to show ({resp.status_code}); is it started with --listen?")
    return resp.content
