"""trainyard on a real 3-node NATS cluster (issue 16): three nats-servers with routes on
loopback, every stream and the lease bucket kept on all three (`--stream-replicas 3`), three
gateways (each its own DuckDB projection) and an agent with simulated GPUs, all given the three
URLs. Nodes and gateways are killed while jobs print and the queue is busy; nothing may be lost,
stored twice, run twice, or scheduled by two gateways."""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from tests.harness import Api, check_lines, paced, trainyard_up
from trainyard.stack import NatsNode, Stack, free_port

GATEWAYS = ("g1", "g2", "g3")
FLAGS = ("--stream-replicas", "3", "--host-timeout-s", "3", "--host-lost-grace-s", "30", "--scheduler-lease-ttl-s", "3")


@dataclass
class NatsCluster:
    tmp: Path
    stack: Stack
    nodes: list[NatsNode]
    url: str
    token: str
    ports: dict[str, int] = field(default_factory=dict)  # gateway -> its API port
    apis: dict[str, Api] = field(default_factory=dict)

    def start_gateway(self, name: str) -> None:
        self.stack.start_gateway(self.tmp / name, self.ports[name], self.url, "--replica", name, *FLAGS)

    def proc(self, name: str):
        return next(p for n, p in reversed(self.stack.procs) if n == name and p.poll() is None)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.proc(name)
        proc.send_signal(sig)
        proc.wait(30)

    def leader_of(self, stream: str) -> str:
        """The node that leads `stream`'s replicas now (from a live node's monitoring)."""
        for node in self.nodes:
            port = self.stack.node_monitor_ports[node.name]
            try:
                jsz = httpx.get(f"http://127.0.0.1:{port}/jsz?streams=true", timeout=2).json()
            except httpx.HTTPError:
                continue
            for account in jsz.get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail["name"] == stream and detail.get("cluster", {}).get("leader"):
                        return str(detail["cluster"]["leader"])
        raise AssertionError(f"no node reports a leader of {stream}")

    def scheduler_leaders(self, names: tuple[str, ...]) -> set[str]:
        return {self.apis[n].client.get("/system/status").json()["scheduler_leader"] for n in names}


@pytest.fixture(scope="module")
def nc3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    tmp = tmp_path_factory.mktemp("nats-cluster")
    routes = tuple(free_port() for _ in range(3))
    nodes = [NatsNode(f"n{i}", free_port(), routes[i], routes) for i in range(3)]
    stack = Stack()
    url = stack.start_nats_cluster(tmp, nodes)
    (tmp / "g1").mkdir()
    token = TokenStore(tmp / "g1" / TOKENS_FILE).create("admin")
    cluster = NatsCluster(tmp, stack, nodes, url, token)
    try:
        for name in GATEWAYS:
            if name != "g1":  # every replica knows the same tokens
                (tmp / name).mkdir()
                shutil.copy(tmp / "g1" / TOKENS_FILE, tmp / name / TOKENS_FILE)
            cluster.ports[name] = free_port()
            cluster.start_gateway(name)
            cluster.apis[name] = Api(f"http://127.0.0.1:{cluster.ports[name]}", token)
        stack.start_agent("c1", tmp / "work", url, tmp / "agent-c1.log", "--simulate-gpus", "2x80GB",
                          "--heartbeat-interval-s", "0.5")
        deadline = time.monotonic() + 30
        while cluster.apis["g1"].client.get("/system/status").json()["hosts_online"] != 1:
            assert time.monotonic() < deadline, "the agent did not come online"
            time.sleep(0.2)
        yield cluster
    finally:
        for api in cluster.apis.values():
            api.client.close()
        stack.stop()


def last_seq(api: Api, job: str) -> int:
    lines = api.logs(job, tail=1)
    return int(lines[-1]["seq"]) if lines else -1


class GapWatch:
    """Asks a gateway for its job list every 50 ms from a thread: the longest time without an
    answer, and the answers that were not 200."""

    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        self.longest_s = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                r = self.client.get("/api/v1/training/jobs", params={"limit": 5})
                if r.status_code == 200:
                    now = time.monotonic()
                    self.longest_s = max(self.longest_s, now - last)
                    last = now
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()


def test_losing_a_node_loses_nothing_and_runs_nothing_twice(nc3: NatsCluster, tmp_path: Path) -> None:
    api = nc3.apis["g1"]
    watch = GapWatch(api.base, nc3.token)
    ledger = tmp_path / "ran.txt"
    once = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); import time; time.sleep(0.3)"
    try:
        printer = api.submit(paced(6000, 30.0))
        queue = [api.submit([sys.executable, "-c", once, str(ledger), f"short-{i}"], gpus=1) for i in range(30)]
        time.sleep(3)
        victim = nc3.leader_of("TY_LOG")  # the node every log batch goes through now
        nc3.kill(f"nats-{victim}")
        # The work goes on while it is down: the other two hold every stream's copies.
        before, killed_at = last_seq(api, printer), time.monotonic()
        while last_seq(api, printer) < before + 100:
            assert time.monotonic() - killed_at < 15, "no line was stored while a node was down"
            time.sleep(0.1)
        resumed_s = time.monotonic() - killed_at
        nc3.stack.start_nats_node(nc3.tmp, next(n for n in nc3.nodes if n.name == victim))
        time.sleep(4)
        # Then another node stops cleanly and stays away while the work finishes: every stream
        # must go on with the two copies left (with one replica, a stream on that node stops).
        leading = [nc3.leader_of(stream) for stream in ("TY_JOB", "TY_LOG", "TY_CMD")]
        other = next(n for name in [*leading, *(n.name for n in nc3.nodes)] for n in nc3.nodes
                     if n.name == name != victim)  # one that leads a stream now, if one but the victim does
        nc3.kill(f"nats-{other.name}", signal.SIGTERM)
        assert api.wait(printer, timeout_s=120)["status"] == "succeeded"
        ended = [api.wait(job, timeout_s=120) for job in queue]
    finally:
        watch.stop()
        if "other" in locals():
            nc3.stack.start_nats_node(nc3.tmp, other)
    print(f"\n[cluster] killed {victim} (TY_LOG's leader), started it again, then stopped {other.name}; the "
          f"API's longest gap {watch.longest_s * 1e3:.0f} ms; 100 more lines stored {resumed_s:.1f} s after the kill "
          f"(the node still down); answers other than 200: {len(watch.failures)}")
    assert [e["status"] for e in ended] == ["succeeded"] * len(queue), ended
    assert all(e["attempt"] == 1 for e in ended), [e for e in ended if e["attempt"] != 1]
    ran = ledger.read_text().split()
    assert sorted(ran) == sorted(f"short-{i}" for i in range(30)), ran  # each job's trainer ran once
    lines = check_lines(api, printer, 6000)
    assert lines.exact, lines  # every line stored once, in order
    assert watch.failures == [], watch.failures[:5]
    # Every replica projected the same: the same jobs and lines.
    for name in ("g2", "g3"):
        other_api = nc3.apis[name]
        assert other_api.wait(queue[-1], timeout_s=60)["status"] == "succeeded"
        deadline = time.monotonic() + 30  # its projection may lag a moment; it may not lose a line
        while not (theirs := check_lines(other_api, printer, 6000)).exact:
            assert time.monotonic() < deadline, (name, theirs)
            time.sleep(0.5)
    # One scheduler, the same for every replica. The node stopped last has just come back: while
    # the lease bucket's replicas catch up, a replica's view may lag one renewal (a lease tick).
    deadline = time.monotonic() + 10
    while len(leaders := nc3.scheduler_leaders(GATEWAYS)) != 1:
        assert time.monotonic() < deadline, leaders
        time.sleep(0.2)


def test_the_scheduling_gateway_dies_and_another_takes_over(nc3: NatsCluster) -> None:
    [leader] = nc3.scheduler_leaders(GATEWAYS)
    dead = next(n for n in GATEWAYS if leader.startswith(f"{n}-"))
    victim = next(p for n, p in nc3.stack.procs if n == "gateway" and p.poll() is None
                  and f"--replica {dead} " in " ".join(map(str, p.args)) + " ")
    victim.kill()
    victim.wait(30)
    alive = tuple(n for n in GATEWAYS if n != dead)
    deadline = time.monotonic() + 30
    while True:
        leaders = nc3.scheduler_leaders(alive)
        if len(leaders) == 1 and not next(iter(leaders)).startswith(f"{dead}-"):
            break
        assert time.monotonic() < deadline, leaders
        time.sleep(0.2)
    # Writes through any replica are read back at once on that replica, and scheduled.
    for name in alive:
        api = nc3.apis[name]
        job = api.submit([sys.executable, "-c", "print('after the leader died')"])
        assert api.client.get(f"/jobs/{job}").status_code == 200  # read-your-writes, no wait
        assert api.wait(job, timeout_s=30)["status"] == "succeeded"
    nc3.start_gateway(dead)  # it comes back, catches up, and does not take the lease back by force
    assert nc3.apis[dead].wait(job, timeout_s=60)["status"] == "succeeded"
    assert len(nc3.scheduler_leaders(GATEWAYS)) == 1


def _free_cluster_ports() -> int:
    """A first client port P such that P..P+2 and their route ports (+2000) are all free."""
    import random
    import socket

    for _ in range(200):
        base = random.randint(20000, 28000)
        try:
            for port in [base + i for i in range(3)] + [base + 2000 + i for i in range(3)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of ports")


def test_up_starts_a_three_node_cluster(tmp_path: Path) -> None:
    """The README's `trainyard up --cluster 3`: three nodes, every stream on all three, a job runs."""
    import asyncio

    import nats

    from shared.nats.auth import credentials_dir, load_credentials

    base, port = _free_cluster_ports(), free_port()
    data = tmp_path / "data"
    with trainyard_up("--data-dir", str(data), "--port", str(port), "--nats-port", str(base), "--cluster", "3",
                      "--host", "c3", "--simulate-gpus", "1x80GB") as text:
        assert "trainyard is up" in text, text
        urls = ",".join(f"nats://127.0.0.1:{base + i}" for i in range(3))
        assert f"NATS:   {urls}" in text, text
        api = Api(f"http://127.0.0.1:{port}", (data / "api-token").read_text().strip())
        job = api.submit([sys.executable, "-c", "print('on a cluster')"])
        assert api.wait(job, timeout_s=60)["status"] == "succeeded"
        api.client.close()

        async def replicas() -> dict[str, tuple[int, int]]:
            cred = load_credentials(credentials_dir(data / "nats") / "gateway.json")
            nc = await nats.connect(urls.split(","), user=cred.user, password=cred.password,
                                    inbox_prefix=cred.inbox_prefix)
            try:
                js = nc.jetstream()
                found = {}
                for stream in ("TY_CMD", "TY_JOB", "TY_LOG", "TY_HOST", "KV_ty_lease"):
                    info = await js.stream_info(stream)
                    found[stream] = (info.config.num_replicas, len(info.cluster.replicas or []) + 1)
                return found
            finally:
                await nc.close()

        assert set(asyncio.run(replicas()).values()) == {(3, 3)}
