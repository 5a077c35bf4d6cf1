"""NATS users per role (DESIGN §10): what each process may publish and subscribe to.

- `gateway`: everything (it provisions streams, creates consumers, sends commands).
- `agent-<host>`: reads only its own host's commands (its durable pull consumer, which the
  gateway creates), publishes job events, logs and its own host's heartbeats. It may not
  publish commands, create consumers or streams, or read another host's commands.
- `viewer`: reads events, logs and heartbeats; publishes nothing of trainyard's.

Each process gets its own inbox prefix (`_INBOX_<user>`), so that no user can subscribe to the
replies another one receives. An agent publishes job events and logs only on subjects ending in
its host (`ty.job.<job>.<kind>.<host>`, `ty.log.<job>.<host>`): it cannot submit, schedule,
cancel or delete a job (the gateway's subjects), and the projector takes from those subjects
only what a host reports, lifecycle reports (started, exited, refused) only from the host the
job is placed on, and other reports only on attempts placed on that host. What a host's
credentials can still do: add log lines to jobs that run elsewhere (not change their status).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import msgspec

from shared import subjects
from shared.ids import check_token

GATEWAY_USER = "gateway"
VIEWER_USER = "viewer"


class NatsCredentials(msgspec.Struct, kw_only=True):
    user: str
    password: str

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX_{self.user}"


def agent_user(host: str) -> str:
    return f"agent-{check_token(host, 'host')}"


def load_credentials(path: str | Path) -> NatsCredentials:
    return msgspec.json.decode(Path(path).read_bytes(), type=NatsCredentials)


def permissions(user: str) -> dict[str, Any]:
    inbox = [f"_INBOX_{user}.>"]
    if user == GATEWAY_USER:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if user == VIEWER_USER:
        return {
            # Reads the event streams, never the per-host commands.
            "publish": {"allow": ["$JS.API.INFO", "$JS.API.STREAM.INFO.*",
                                  *(f"$JS.API.STREAM.MSG.GET.{s}" for s in subjects.EVENT_STREAMS)]},
            "subscribe": {"allow": ["ty.job.>", "ty.log.>", "ty.host.>", *inbox]},
        }
    host = user.removeprefix("agent-")
    if not user.startswith("agent-") or check_token(host, "host") != host:
        raise ValueError(f"no NATS role for user {user!r}")
    consumer = subjects.agent_consumer(host)
    workdirs = f"OBJ_{subjects.WORKDIR_BUCKET}"
    return {
        "publish": {"allow": [
            # Its own agent subjects only: job events and logs that name this host.
            subjects.job_event("*", "*", host), subjects.job_log("*", host), subjects.host_event(host, ">"),
            f"$JS.API.CONSUMER.INFO.{subjects.CMD_STREAM}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{subjects.CMD_STREAM}.{consumer}",
            f"$JS.ACK.{subjects.CMD_STREAM}.{consumer}.>",
            # A restarted agent asks where its own attempts' logs and metrics stand (re-adoption):
            # the last message on its own subjects only, by direct get (no stream-wide reads).
            f"$JS.API.DIRECT.GET.{subjects.LOG_STREAM}.{subjects.job_log('*', host)}",
            f"$JS.API.DIRECT.GET.{subjects.JOB_STREAM}.{subjects.job_event('*', 'metrics', host)}",
            # At start: is another agent of this host name alive (its last heartbeat)?
            f"$JS.API.DIRECT.GET.{subjects.HOST_STREAM}.{subjects.host_event(host, 'heartbeat')}",
            "$JS.API.INFO",
            # Code archives (`submit --workdir`): read, through an ordered consumer it makes on
            # that bucket's stream only (never on the command stream).
            f"$JS.API.STREAM.INFO.{workdirs}", f"$JS.API.STREAM.MSG.GET.{workdirs}",
            f"$JS.API.CONSUMER.CREATE.{workdirs}", f"$JS.API.CONSUMER.CREATE.{workdirs}.>",
            f"$JS.API.CONSUMER.DELETE.{workdirs}.>", f"$JS.FC.{workdirs}.>",
            "$JS.API.STREAM.NAMES",  # nats-py finds the bucket's stream by its subject (names only)
        ]},
        # The gateway's questions about a job's files on this host (answered on their reply
        # subject: allow_responses, nothing else of the gateway's inbox).
        "subscribe": {"allow": [*inbox, subjects.host_files(host)]},
        "allow_responses": True,
    }


def authorization_block(users: list[NatsCredentials], host_nkeys: dict[str, str] | None = None) -> str:
    """The `authorization { users = [...] }` section of a nats-server config: password users,
    and hosts that joined with an nkey (host -> public key), each with its agent's permissions."""
    lines = ["authorization {", "  users = ["]
    entries: list[dict[str, object]] = [
        {"user": cred.user, "password": cred.password, "permissions": permissions(cred.user)} for cred in users]
    entries += [{"nkey": nkey, "permissions": permissions(agent_user(host))}
                for host, nkey in (host_nkeys or {}).items()]
    for entry in entries:
        lines.append("    " + json.dumps(entry))  # the config format accepts JSON objects
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def credentials_dir(nats_dir: Path) -> Path:
    return nats_dir / "credentials"


def ensure_credentials(nats_dir: Path, user: str) -> Path:
    """The credentials file for `user` (created with a random password on first use, mode
    0600); returns its path, which is what `--nats-credentials` takes."""
    permissions(user)  # refuses an unknown role
    folder = credentials_dir(nats_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{user}.json"
    if not path.exists():
        cred = NatsCredentials(user=user, password=secrets.token_urlsafe(24))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(cred))
    return path


def all_credentials(nats_dir: Path) -> list[NatsCredentials]:
    folder = credentials_dir(nats_dir)
    return [load_credentials(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
