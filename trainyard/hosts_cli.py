"""`trainyard host add|remove|list`: GPU hosts' NATS identities, against the data dir of the
`trainyard up` that runs nats-server (run these on that machine, as its admin).

`up` records where other machines reach it (`endpoints.json`: the API's and NATS's URLs and the
CA's pin) so that `host add` prints a join command that works as printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shared.nats import auth as natsauth
from shared.nats import join, users
from shared.paths import private_dir
from trainyard.endpoints import Endpoints, local_ca, read_endpoints
from trainyard.gateway_client import ClientError, Gateway


def join_command(endpoints: Endpoints, host: str, token: str) -> str:
    parts = ["trainyard", "agent", "--host", host, "--join", token, "--api-url", endpoints.api_url,
             "--nats-url", endpoints.nats_url]
    if endpoints.ca_pin:
        parts += ["--ca-pin", endpoints.ca_pin]
    return " ".join(parts)


def cmd_host(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    nats_dir = data_dir / "nats"
    if not (nats_dir / "credentials").is_dir():
        print(f"trainyard host: {data_dir} is not the data dir of a trainyard up (no nats/credentials); "
              "give --data-dir", file=sys.stderr)
        return 2
    private_dir(data_dir)
    if args.host_command == "add":
        return _add(args, data_dir, nats_dir)
    if args.host_command == "remove":
        if not join.remove(nats_dir, args.name):
            local = (nats_dir / "credentials" / f"agent-{args.name}.json").exists()
            print(f"trainyard host remove: host {args.name!r} " + (
                "is the agent trainyard up runs on this machine (it would start it again): stop trainyard up "
                "instead" if local else "has not joined (trainyard host list shows who has)"), file=sys.stderr)
            return 1
        print(f"removed {args.name}: its NATS identity is revoked and its connection closed")
        return 0
    return _list(data_dir, nats_dir)


def _add(args: argparse.Namespace, data_dir: Path, nats_dir: Path) -> int:
    try:
        token = join.issue(nats_dir, args.name, ttl_s=args.ttl, replace=args.replace)
    except (join.HostAlreadyJoined, ValueError) as exc:
        print(f"trainyard host add: {exc}", file=sys.stderr)
        return 1
    endpoints = read_endpoints(data_dir)
    if endpoints is None:
        print("trainyard host add: trainyard up has not run with this data dir yet; start it first "
              "(with --listen ADDR for other machines)", file=sys.stderr)
        return 1
    expires = time.strftime("%H:%M", time.localtime(time.time() + args.ttl))
    print(f"join token for {args.name}: one use, until {expires}.")
    if not endpoints.ca_pin:
        print("note: this trainyard listens on loopback only, so only this machine can join; start "
              "trainyard up with --listen 0.0.0.0 for other machines.")
    print(f"On {args.name}, with trainyard installed, run:")
    print(join_command(endpoints, args.name, token))
    return 0


def _list(data_dir: Path, nats_dir: Path) -> int:
    rows = [(h.host, "nkey", time.strftime("%Y-%m-%d %H:%M", time.localtime(h.joined_s)))
            for h in users.joined_hosts(nats_dir)]
    rows += [(c.user.removeprefix("agent-"), "password (local)", "")
             for c in natsauth.all_credentials(nats_dir) if c.user.startswith("agent-")]
    states = _host_states(data_dir)
    print(f"{'host':24} {'state':10} {'identity':18} joined")
    for host, kind, joined in sorted(rows):
        print(f"{host:24} {states.get(host, 'never seen' if states else '?'):10} {kind:18} {joined}")
    return 0


def _host_states(data_dir: Path) -> dict[str, str]:
    """Each host's state as the gateway of this data dir shows it ({} if it does not answer)."""
    endpoints = read_endpoints(data_dir)
    token_file = data_dir / "api-token"
    if endpoints is None or not token_file.exists():
        return {}
    gateway = Gateway(endpoints.api_url, token_file.read_text().strip(), ca_file=local_ca(data_dir), timeout_s=5.0)
    try:
        return {h["host"]: h["status"] for h in gateway.call("GET", "/api/v1/training/hosts")}
    except (ClientError, ValueError, KeyError, TypeError):
        return {}


def add_host_commands(sub: argparse._SubParsersAction) -> None:
    hp = sub.add_parser("host", help="GPU hosts' identities: add (prints the join command), remove, list")
    hs = hp.add_subparsers(dest="host_command", required=True)
    add = hs.add_parser("add", help="a one-time join token for a host, and the command to run there")
    add.add_argument("name", help="the host's name (its agent's --host)")
    add.add_argument("--ttl", type=float, default=join.DEFAULT_TTL_S, metavar="SECONDS",
                     help="the token is good this long (default 3600)")
    add.add_argument("--replace", action="store_true", help="give a host that joined already a new identity")
    rm = hs.add_parser("remove", help="revoke a host's identity: its connection drops at once")
    rm.add_argument("name")
    ls = hs.add_parser("list", help="hosts with an identity here (state: trainyard hosts)")
    for p in (add, rm, ls):
        p.add_argument("--data-dir", default="./trainyard-data", help="trainyard up's data dir")
        p.set_defaults(func=cmd_host)
