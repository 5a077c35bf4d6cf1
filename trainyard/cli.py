"""`trainyard` command line: start the parts (`up`, `gateway`, `agent`) and admin tasks."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared import tls
from shared.config import DEFAULT_NATS_URL, AgentSettings, GatewaySettings, load_settings
from shared.paths import hold_lock, private_dir


def _config_path(args: argparse.Namespace) -> Path | None:
    if getattr(args, "config", None):
        return Path(args.config)
    data_dir = getattr(args, "data_dir", None)
    for candidate in ([Path(data_dir) / "trainyard.toml"] if data_dir else []) + [Path("trainyard.toml")]:
        if candidate.is_file():
            return candidate
    return None


def _nats_url(args: argparse.Namespace) -> str | None:
    return args.nats_url


def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.main import run_gateway

    settings = load_settings(
        GatewaySettings, toml_path=_config_path(args), section="gateway",
        overrides={"data_dir": args.data_dir, "port": args.port, "bind": args.bind,
                   "nats_url": _nats_url(args), "insecure": args.insecure or None,
                   "nats_credentials": args.nats_credentials, "nats_monitor_url": args.nats_monitor_url,
                   "nats_ca": args.nats_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
                   "replica": args.replica, "host_timeout_s": args.host_timeout_s,
                   "host_lost_grace_s": args.host_lost_grace_s,
                   "scheduler_lease_ttl_s": args.scheduler_lease_ttl_s, "stream_replicas": args.stream_replicas},
    )
    run_gateway(settings)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from agent.main import run_agent

    settings = load_settings(
        AgentSettings, toml_path=_config_path(args), section="agent",
        overrides={"host": args.host, "work_dir": args.work_dir, "nats_url": _nats_url(args),
                   "nats_credentials": args.nats_credentials, "nats_ca": args.nats_ca,
                   "join_token": args.join, "api_url": args.api_url, "ca_pin": args.ca_pin,
                   "simulate_gpus": args.simulate_gpus,
                   "heartbeat_interval_s": args.heartbeat_interval_s,
                   "diffusion_pipe_dir": args.diffusion_pipe_dir, "python": args.python,
                   "max_log_bytes_per_attempt": args.max_log_bytes_per_attempt,
                   "stop_trainers_on_exit": args.stop_trainers_on_exit or None,
                   "metrics_port": args.metrics_port},
    )
    if not settings.host:
        print("trainyard agent: --host NAME is required (or TRAINYARD_HOST)", file=sys.stderr)
        return 2
    run_agent(settings)
    return 0


# `trainyard up` starts a part that died again, unless it died this often within the window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


UP_LOCK = "up.lock"


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.api.auth import ensure_admin_token
    from trainyard.endpoints import Endpoints, write_endpoints
    from trainyard.jetstream_watch import JetStreamWatch
    from trainyard.stack import Stack, cluster_nodes, host_token, is_loopback, url_host, wait_for_host_online

    data_dir = private_dir(Path(args.data_dir).resolve())
    lock = hold_lock(data_dir / UP_LOCK)  # one `up` per data dir, as long as this process lives
    if isinstance(lock, str):
        print(f"trainyard up: data dir {data_dir} is in use by another trainyard up (pid {lock}); "
              "stop it first, or give this one another --data-dir", file=sys.stderr)
        return 2
    token = ensure_admin_token(data_dir)
    nodes = cluster_nodes(args.nats_port, args.cluster) if args.cluster > 1 else []
    stack = Stack()
    bind, advertise = args.bind, args.bind
    if not is_loopback(args.listen):
        # Other machines: nats-server and the API listen there, with TLS from up's own CA.
        advertise = args.advertise or _advertised_address(args.listen)
        stack.listen, bind = args.listen, args.listen
        stack.tls_folder = tls.ensure_certificates(data_dir, [advertise])
    scheme = stack.nats_scheme
    here = url_host(stack.local_address)
    nats_url = ",".join(f"{scheme}://{here}:{n.port}" for n in nodes) or f"{scheme}://{here}:{args.nats_port}"
    local_api = stack.local_api_url(args.port)
    api_url = f"{'https' if stack.tls_folder else 'http'}://{url_host(advertise)}:{args.port}"
    endpoints = Endpoints(
        api_url=api_url, ca_pin=tls.ca_pin((stack.tls_folder / tls.CA_FILE).read_bytes()) if stack.tls_folder else "",
        nats_url=",".join(f"{scheme}://{url_host(advertise)}:{n.port}" for n in nodes)
        or f"{scheme}://{url_host(advertise)}:{args.nats_port}")
    write_endpoints(data_dir, endpoints)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        extra_gw = ["--bind", bind, *(["--stream-replicas", "3"] if nodes else [])]
        # The agent has no data dir of its own: it reads `[agent]` of DATA/trainyard.toml (read
        # at each start, so a change applies when the agent is next started).
        agent_extra = ["--config", str(data_dir / "trainyard.toml")]
        if args.simulate_gpus:
            agent_extra += ["--simulate-gpus", args.simulate_gpus]
        if args.stop_trainers_on_exit:
            agent_extra += ["--stop-trainers-on-exit"]
        host = host_token(args.host or socket.gethostname())
        # How each part starts, so that one that dies can be started again.
        if nodes:
            stack.start_nats_cluster(data_dir, nodes)
        nats_parts: dict[str, Callable[[], object]] = {
            f"nats-{n.name}": functools.partial(stack.start_nats_node, data_dir, n) for n in nodes
        } or {"nats": lambda: stack.start_nats(data_dir, args.nats_port)}
        starters = {
            **nats_parts,
            "gateway": lambda: stack.start_gateway(data_dir, args.port, nats_url, *extra_gw),
            f"agent-{host}": lambda: stack.start_agent(host, data_dir / "work", nats_url,
                                                      data_dir / "logs" / "agent.log", *agent_extra),
        }
        for name, start in starters.items():
            if not (nodes and name in nats_parts):  # a cluster's nodes were started together
                start()
        # "Up" means a job submitted now can be placed: the local agent is online.
        wait_for_host_online(local_api, token, host, ca_file=stack.ca_file)
        # The token travels in the URL's fragment: a browser never sends that part to a server.
        print(f"trainyard is up\n  dashboard: {api_url}/ui/#token={token}\n"
              f"  API:    {api_url}/api/v1/training  (docs: {api_url}/docs)\n"
              f"  token:  {token}   (saved in {data_dir / 'api-token'})\n"
              f"  NATS:   {endpoints.nats_url}" + (f"  (TLS; CA {endpoints.ca_pin})" if endpoints.ca_pin else "") + "\n"
              f"  add a GPU host: trainyard host add NAME --data-dir {data_dir}  (prints the command to run there"
              + ("" if endpoints.ca_pin else "; other machines need --listen 0.0.0.0") + ")\n"
              f"  agent:  {host}\n  data:   {data_dir}\n  logs:   {data_dir / 'logs'}\n"
              "Ctrl-C stops trainyard" + (" and its trainers." if args.stop_trainers_on_exit
                                          else "; running trainers keep running."), flush=True)
        restarts: dict[str, list[float]] = {name: [] for name in starters}
        jetstream_watch = JetStreamWatch(stack.nats_monitor_url, data_dir / "nats")
        while not stopping:
            if (why := jetstream_watch.restart_reason()) is not None:
                print(f"trainyard: {why}: restarting nats-server", file=sys.stderr, flush=True)
                stack.terminate(next(iter(nats_parts)))  # started again below, as a part that exited
            for name, proc in list(stack.procs):
                if proc.poll() is None or stopping:
                    continue
                recent = [t for t in restarts[name] if time.monotonic() - t < RESTART_WINDOW_S]
                if len(recent) >= MAX_RESTARTS:
                    print(f"trainyard: {name} exited with code {proc.returncode} {len(recent)} times within "
                          f"{RESTART_WINDOW_S:.0f}s; stopping (see {data_dir / 'logs'})", file=sys.stderr)
                    stopping = True
                    break
                # A part that dies is started again: an agent re-adopts its running trainers,
                # a gateway resumes its projection, NATS keeps its streams on disk.
                print(f"trainyard: {name} exited with code {proc.returncode}; starting it again", file=sys.stderr,
                      flush=True)
                stack.procs.remove((name, proc))
                restarts[name] = [*recent, time.monotonic()]
                starters[name]()
            time.sleep(0.2)
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"trainyard up: {exc} (logs in {data_dir / 'logs'})", file=sys.stderr)
        stack.stop()
        return 1
    print("trainyard: stopping ...", flush=True)
    stack.stop(timeout_s=20.0)
    print("trainyard: stopped", flush=True)
    return 0


def _advertised_address(listen: str) -> str:
    """Where other machines reach a server listening on `listen`: that address, or for 0.0.0.0
    this machine's first address that is not loopback."""
    if listen not in ("0.0.0.0", "::"):
        return listen
    _names, addresses = tls.local_names()
    usable = [a for a in addresses if not ipaddress.ip_address(a).is_loopback and ":" not in a]
    return usable[0] if usable else socket.gethostname()


def cmd_rebuild(args: argparse.Namespace) -> int:
    from gateway.projection.rebuild import StreamsMissing, run_rebuild

    out = Path(args.out) if args.out else Path(args.data_dir) / "trainyard.rebuilt.duckdb"
    try:
        default_cred = Path(args.data_dir) / "nats" / "credentials" / "gateway.json"
        cred = args.nats_credentials or (str(default_cred) if default_cred.exists() else "")
        targets = run_rebuild(args.nats_url or DEFAULT_NATS_URL, out, cred)
    except (FileExistsError, StreamsMissing) as exc:
        print(f"trainyard projector rebuild: {exc}", file=sys.stderr)
        return 1
    print(f"rebuilt {out} from streams up to {targets}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.api.auth import TOKENS_FILE, TokenNameTaken, TokenStore

    data_dir = private_dir(Path(args.data_dir))
    store = TokenStore(data_dir / TOKENS_FILE)
    if args.token_command == "list":
        for name, role in store.entries():
            print(f"{name}\t{role}")
        return 0
    if args.token_command == "revoke":
        if not store.revoke(args.name):
            print(f"trainyard token revoke: no token named {args.name!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.name}")
        return 0
    try:
        print(store.create(args.role, args.name))
    except TokenNameTaken as exc:
        print(f"trainyard token create: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainyard", description="GPU training jobs over NATS JetStream")
    p.add_argument("--log-level", default=os.environ.get("TRAINYARD_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start nats-server, a gateway and a local agent")
    up.add_argument("--data-dir", default="./trainyard-data",
                    help="where NATS, the projection, tokens, logs and run dirs live")
    up.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    up.add_argument("--bind", default="127.0.0.1", help="the API's address (default 127.0.0.1: this machine only)")
    up.add_argument("--nats-port", type=int, default=4222, help="the embedded nats-server's port (default 4222)")
    up.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                    help="where nats-server and the API listen (default 127.0.0.1); another address, e.g. "
                         "0.0.0.0, lets GPU hosts join, with TLS from a CA made in the data dir")
    up.add_argument("--advertise", default=None, metavar="ADDR",
                    help="with --listen: the address hosts reach this machine at (default: its first one)")
    up.add_argument("--host", default=None, help="this machine's agent name (default: hostname)")
    up.add_argument("--simulate-gpus", default=None, metavar="Nx80GB",
                    help="pretend this machine has N GPUs of that memory (no NVIDIA driver needed)")
    up.add_argument("--stop-trainers-on-exit", action="store_true",
                    help="Ctrl-C stops running trainers too (default: they run on)")
    up.add_argument("--cluster", type=int, choices=(1, 3), default=1,
                    help="3: three nats-servers clustered on loopback (ports NATS-PORT..+2, routes +2000), "
                         "every stream kept on all three; any one may die")
    up.set_defaults(func=cmd_up)

    gw = sub.add_parser("gateway", help="run a gateway (API, projector, scheduler)")
    gw.add_argument("--data-dir", default=None, help="where the projection, tokens and secrets live")
    gw.add_argument("--port", type=int, default=None, help="the API's port (default 8000)")
    gw.add_argument("--bind", default=None, help="the API's address (default 127.0.0.1)")
    gw.add_argument("--nats-url", default=None, help="nats-server (default nats://127.0.0.1:4222)")
    gw.add_argument("--nats-credentials", default=None, metavar="FILE",
                    help="NATS user and password (JSON {user, password}); trainyard up writes them")
    gw.add_argument("--nats-ca", default=None, metavar="FILE", help="trust this CA for tls:// NATS URLs")
    gw.add_argument("--tls-cert", default=None, metavar="FILE", help="serve HTTPS with this certificate")
    gw.add_argument("--tls-key", default=None, metavar="FILE", help="the certificate's private key")
    gw.add_argument("--nats-monitor-url", default=None, metavar="URL",
                    help="nats-server's HTTP monitoring, for /health (e.g. http://127.0.0.1:8222)")
    gw.add_argument("--replica", default=None, help="this gateway's name among replicas (default g1)")
    gw.add_argument("--insecure", action="store_true", help="allow no tokens (loopback only)")
    gw.add_argument("--host-timeout-s", type=float, default=None,
                    help="a host silent this long is offline (default 15)")
    gw.add_argument("--host-lost-grace-s", type=float, default=None,
                    help="then its jobs are lost (or retried) after this much more (default 30)")
    gw.add_argument("--scheduler-lease-ttl-s", type=float, default=None,
                    help="another gateway takes over scheduling this long after the leader dies (default 6)")
    gw.add_argument("--stream-replicas", type=int, choices=(1, 3), default=None,
                    help="copies of every stream and bucket: 1 (one nats-server) or 3 (a 3-node cluster)")
    gw.add_argument("--config", default=None, help="a trainyard.toml (default: DATA-DIR's, else the current dir's)")
    gw.set_defaults(func=cmd_gateway)

    ag = sub.add_parser("agent", help="run a host agent")
    ag.add_argument("--host", default=None, help="this host's name (required; TRAINYARD_HOST)")
    ag.add_argument("--work-dir", default=None, help="run dirs and state files (default ./trainyard-work)")
    ag.add_argument("--nats-url", default=None, help="nats-server (default nats://127.0.0.1:4222)")
    ag.add_argument("--nats-credentials", default=None, metavar="FILE",
                    help="this host's agent credentials (user agent-HOST)")
    ag.add_argument("--nats-ca", default=None, metavar="FILE", help="trust this CA for tls:// NATS URLs")
    ag.add_argument("--join", default=None, metavar="TOKEN",
                    help="join with this one-time token (trainyard host add prints the whole command)")
    ag.add_argument("--api-url", default=None, metavar="URL", help="with --join: the gateway that takes the token")
    ag.add_argument("--ca-pin", default=None, metavar="sha256:HEX",
                    help="with --join: the CA the gateway and nats-server must show")
    ag.add_argument("--simulate-gpus", default=None, metavar="Nx80GB",
                    help="pretend this host has N GPUs of that memory")
    ag.add_argument("--heartbeat-interval-s", type=float, default=None, help="seconds between heartbeats (default 3)")
    ag.add_argument("--diffusion-pipe-dir", default=None, help="diffusion-pipe checkout (train.py's dir)")
    ag.add_argument("--python", default=None, help="interpreter for `hf` scripts (default: the agent's)")
    ag.add_argument("--max-log-bytes-per-attempt", type=int, default=None,
                    help="log text shipped per attempt; 0: no cap (default 4 GiB)")
    ag.add_argument("--stop-trainers-on-exit", action="store_true", help="stopping the agent stops its trainers too")
    ag.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                    help="serve the agent's Prometheus metrics on 127.0.0.1:PORT (setting metrics_bind)")
    ag.add_argument("--config", default=None,
                    help="a trainyard.toml whose [agent] applies (default: the current dir's)")
    ag.set_defaults(func=cmd_agent)

    pr = sub.add_parser("projector", help="projector maintenance")
    prs = pr.add_subparsers(dest="projector_command", required=True)
    rb = prs.add_parser("rebuild", help="replay the streams into a fresh DuckDB file")
    rb.add_argument("--data-dir", default="./trainyard-data")
    rb.add_argument("--nats-url", default=os.environ.get("TRAINYARD_NATS_URL"))
    rb.add_argument(
        "--nats-credentials",
        default=os.environ.get("TRAINYARD_NATS_CREDENTIALS", ""),
        metavar="FILE",
        help="gateway credentials (default: <data-dir>/nats/credentials/gateway.json if there)",
    )
    rb.add_argument("--out", default=None)
    rb.set_defaults(func=cmd_rebuild)

    from trainyard.client_args import add_client_commands
    from trainyard.hosts_cli import add_host_commands

    add_client_commands(sub)
    add_host_commands(sub)

    tk = sub.add_parser("token", help="API tokens")
    tks = tk.add_subparsers(dest="token_command", required=True)
    tc = tks.add_parser("create", help="create a token and print it")
    tc.add_argument("--role", choices=("viewer", "operator", "admin"), default="viewer")
    tc.add_argument("--name", default=None, help="who holds it (jobs record their submitter)")
    tc.add_argument("--data-dir", default="./trainyard-data")
    tc.set_defaults(func=cmd_token)
    tl = tks.add_parser("list", help="every token's name and role (never the token)")
    tl.add_argument("--data-dir", default="./trainyard-data")
    tl.set_defaults(func=cmd_token)
    tr = tks.add_parser("revoke", help="remove a token: the gateway refuses it on the next request")
    tr.add_argument("name")
    tr.add_argument("--data-dir", default="./trainyard-data")
    tr.set_defaults(func=cmd_token)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request (health checks, webhooks)
    return args.func(args)
