"""The NATS users of an embedded nats-server (`trainyard up`), kept as files in its nats dir,
and how a change reaches the running servers without a restart.

- `credentials/<user>.json`: password users of the processes `up` starts on this machine
  (gateway, viewer, the local agent); see auth.ensure_credentials.
- `hosts/<host>.json`: hosts that joined (`trainyard host add`): the public half of an nkey
  the host made itself. The seed never leaves the host; nats-server checks, on each connect,
  a signature of its nonce with that key.
- `auth.conf`: the `authorization` block made from both, included by every node's config.

A change rewrites auth.conf and sends SIGHUP to every nats-server whose pid file lies in the nats
dir (each node of a cluster), then waits until each has reloaded: a removed host's connection is
closed by the server at the reload.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import nkeys
import psutil

from shared.ids import check_token
from shared.nats import auth as natsauth
from shared.paths import write_private

AUTH_FILE = "auth.conf"
RELOADED = "Reloaded server configuration"


class HostIdentity(msgspec.Struct, kw_only=True):
    host: str
    nkey: str  # the public user nkey (U...)
    joined_s: float


def valid_user_nkey(public: str) -> bool:
    """Whether `public` is a well-formed public user nkey: base32 of the user prefix byte, 32
    key bytes and their CRC-16 (nkeys' KeyPair does not check a public key it is given, and a
    malformed one in auth.conf would make every nats-server refuse to reload)."""
    if len(public) != 56 or not public.startswith("U"):
        return False
    try:
        raw = base64.b32decode(public)
    except (binascii.Error, ValueError):
        return False
    checksum: int = nkeys.crc16(raw[:33])
    return raw[0] == nkeys.PREFIX_BYTE_USER and checksum == int.from_bytes(raw[33:], "little")


def hosts_dir(nats_dir: Path) -> Path:
    return nats_dir / "hosts"


def joined_hosts(nats_dir: Path) -> list[HostIdentity]:
    folder = hosts_dir(nats_dir)
    if not folder.is_dir():
        return []
    return [msgspec.json.decode(p.read_bytes(), type=HostIdentity) for p in sorted(folder.glob("*.json"))]


def joined_host(nats_dir: Path, host: str) -> HostIdentity | None:
    path = hosts_dir(nats_dir) / f"{check_token(host, 'host')}.json"
    return msgspec.json.decode(path.read_bytes(), type=HostIdentity) if path.exists() else None


def write_host(nats_dir: Path, identity: HostIdentity) -> None:
    folder = hosts_dir(nats_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(folder / f"{check_token(identity.host, 'host')}.json", msgspec.json.encode(identity))


def forget_host(nats_dir: Path, host: str) -> bool:
    path = hosts_dir(nats_dir) / f"{check_token(host, 'host')}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def authorization_text(nats_dir: Path) -> str:
    return natsauth.authorization_block(natsauth.all_credentials(nats_dir),
                                        {h.host: h.nkey for h in joined_hosts(nats_dir)})


def write_auth_file(nats_dir: Path) -> Path:
    path = nats_dir / AUTH_FILE
    write_private(path, authorization_text(nats_dir).encode())
    return path


@contextlib.contextmanager
def changing(nats_dir: Path) -> Iterator[None]:
    """One change to the users at a time (a join through a gateway, `trainyard host remove`,
    `up` adding its local agent), across processes."""
    nats_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(nats_dir / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def apply(nats_dir: Path, timeout_s: float = 5.0) -> int:
    """Rewrite auth.conf and have every running nats-server of this nats dir reload it; returns
    how many servers reloaded. Call inside `changing`."""
    write_auth_file(nats_dir)
    return reload_servers(nats_dir, timeout_s)


def reload_servers(nats_dir: Path, timeout_s: float = 5.0) -> int:
    """SIGHUP each nats-server with a pid file here and wait until its log says it reloaded."""
    reloaded = 0
    for pid_file in sorted(nats_dir.glob("nats-server*.pid")):
        suffix = pid_file.stem.removeprefix("nats-server")
        try:
            pid = int(pid_file.read_text())
            if "nats-server" not in psutil.Process(pid).name():
                continue  # a stale pid file whose number another process has now: not ours to signal
            log = nats_dir.parent / "logs" / f"nats{suffix}.log"
            start = log.stat().st_size if log.exists() else 0  # the reload's line comes after this
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, psutil.Error):
            continue  # not running (a stale pid file): it reads auth.conf when it starts
        deadline = time.monotonic() + timeout_s
        while not _reloaded_since(log, start):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {pid} did not reload its configuration within {timeout_s:.0f}s")
            time.sleep(0.02)
        reloaded += 1
    return reloaded


def _reloaded_since(log: Path, start: int) -> bool:
    """Whether the log says, past byte `start`, that the server reloaded (read from there only:
    a server's log grows for as long as it runs)."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            return RELOADED.encode() in f.read()
    except OSError:
        return False
