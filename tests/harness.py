"""What the tests and the soak script share: an HTTP client for the API, and a `Rig` of real
processes (nats-server, a gateway, agents with simulated GPUs) that can be killed and started
again, with the checks every fault must pass: each line stored exactly once and in order, no
process of a job left alive, no GPU held."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import nats as nats_py
import psutil

from gateway.api.auth import TOKENS_FILE, TokenStore
from trainyard.stack import Stack, free_port

TRAINERS = Path(__file__).parent / "trainers"
TERMINAL = {"succeeded", "failed", "stopped", "lost"}


class Api:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url
        self.client = httpx.Client(base_url=f"{base_url}/api/v1/training",
                                   headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def submit(self, command: list[str], **fields) -> str:
        r = self.client.post("/jobs", json={"trainer": "command", "command": command, "gpus": 0, **fields})
        assert r.status_code == 201, r.text
        return r.json()["job_id"]

    def status(self, job_id: str) -> dict:
        r = self.client.get(f"/jobs/{job_id}/status")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, statuses=TERMINAL, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status(job_id)
            if st["status"] in statuses:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {st['status']} after {timeout_s}s")
            time.sleep(0.05)

    def wait_progress(self, job_id: str, timeout_s: float = 30.0) -> dict:
        """Until the trainer reported a step: it runs its own code (its signal handlers too),
        not just an interpreter starting up."""
        deadline = time.monotonic() + timeout_s
        while True:
            progress = self.client.get(f"/jobs/{job_id}/progress").json()
            if progress.get("step") is not None:
                return progress
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} reported no step in {timeout_s}s")
            time.sleep(0.05)

    def sse_events(self, path: str, headers: dict | None = None, timeout_s: float = 60.0,
                   ) -> list[tuple[str, str, str]]:
        """(event, id, data) of an SSE stream until it closes."""
        events, event, ident, data = [], "message", "", []
        with self.client.stream("GET", path, headers=headers, timeout=timeout_s) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
            for line in r.iter_lines():
                if line == "":
                    if data:
                        events.append((event, ident, "\n".join(data)))
                    event, ident, data = "message", "", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("id:"):
                    ident = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
        return events

    def follow(self, job_id: str) -> tuple[list[dict], str]:
        """A job's log as `trainyard logs -f` gets it (SSE, from the start): (lines, how it ended)."""
        events = self.sse_events(f"/jobs/{job_id}/logs/stream")
        lines = [json.loads(data) for event, _, data in events if event == "log"]
        return lines, next((data for event, _, data in events if event == "end"), "")

    def logs(self, job_id: str, **params) -> list[dict]:
        lines: list[dict] = []
        after = None if "tail" in params else -1  # from the first line (without it: the latest)
        while True:
            q = {"limit": 10000, **params}
            if after is not None:
                q["after_seq"] = after
            r = self.client.get(f"/jobs/{job_id}/logs", params=q)
            assert r.status_code == 200, r.text
            page = r.json()["lines"]
            lines += page
            if len(page) < 10000 or "tail" in params:
                return lines
            after = page[-1]["seq"]



def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def job_processes(job_id: str) -> list[int]:
    """Live processes started for `job_id` (every one carries TRAINYARD_JOB_ID)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TRAINYARD_JOB_ID") == job_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def paced(lines: int, seconds: float, exit_code: int = 0) -> list[str]:
    return [sys.executable, str(TRAINERS / "paced.py"), str(lines), str(seconds), str(exit_code)]


def paced_output(lines: int) -> tuple[list[str], list[str]]:
    """What `paced.py LINES ...` prints on stdout (metric lines are not log lines) and stderr."""
    return [f"out {i}" for i in range(lines)], [f"err {i}" for i in range(0, lines, 7)]


@dataclass
class LineCheck:
    printed: int
    stored: int
    duplicates: int
    missing: int
    out_of_order: int

    @property
    def exact(self) -> bool:
        return self.printed == self.stored and not (self.duplicates or self.missing or self.out_of_order)


def check_lines(api: Api, job_id: str, lines: int) -> LineCheck:
    """Compare what paced.py printed with what the API stores, per stream, in seq order."""
    stored = api.logs(job_id)
    seqs = [line["seq"] for line in stored]
    out, err = paced_output(lines)
    dup = missing = disorder = 0
    for stream, expected in (("stdout", out), ("stderr", err)):
        got = [line["text"] for line in stored if line["stream"] == stream]
        dup += len(got) - len(set(got))
        missing += len(set(expected) - set(got))
        disorder += sum(1 for a, b in zip(got, expected, strict=False) if a != b) if not missing and not dup else 0
    disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    trainer_rows = sum(1 for line in stored if line["stream"] in ("stdout", "stderr"))
    return LineCheck(len(out) + len(err), trainer_rows, dup, missing, disorder)


@dataclass
class Rig:
    """nats-server, one gateway and agents, each a real process that can be killed (with any
    signal) and started again on the same data: what a fault test or the soak needs."""

    tmp: Path
    gateway_flags: tuple[str, ...] = ("--host-timeout-s", "3", "--host-lost-grace-s", "30",
                                      "--scheduler-lease-ttl-s", "3")
    agent_flags: tuple[str, ...] = ("--heartbeat-interval-s", "0.5")
    stack: Stack = field(default_factory=Stack)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    agent_gpus: dict[str, str] = field(default_factory=dict)  # host -> its --simulate-gpus

    def __post_init__(self) -> None:
        self.nats_port, self.port = free_port(), free_port()
        self.data_dir = self.tmp / "gateway"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.token = TokenStore(self.data_dir / TOKENS_FILE).create("admin")
        self.api = Api(f"http://127.0.0.1:{self.port}", self.token)

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def start(self, agents: dict[str, str]) -> None:
        self.start_nats()
        self.start_gateway()
        for host, gpus in agents.items():
            self.start_agent(host, gpus)
        self.wait_online(len(agents))
        for host in agents:
            self.wait_agent_ready(host)

    def wait_agent_ready(self, host: str, timeout_s: float = 30.0) -> None:
        """Until the agent reads its commands (the gateway created its consumer)."""
        log = self.tmp / f"agent-{host}.log"
        deadline = time.monotonic() + timeout_s
        while f"agent {host} up" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"agent {host} not up: {log.read_text()[-2000:]}"
            time.sleep(0.05)

    def start_nats(self) -> None:
        self.procs["nats"] = self.stack.start_nats(self.tmp / "nats", self.nats_port)

    def start_gateway(self) -> None:
        self.procs["gateway"] = self.stack.start_gateway(self.data_dir, self.port, self.nats_url, *self.gateway_flags)

    def start_agent(self, host: str, gpus: str = "2x80GB", env: dict[str, str] | None = None) -> None:
        self.procs[f"agent-{host}"] = self.stack.start_agent(
            host, self.tmp / f"work-{host}", self.nats_url, self.tmp / f"agent-{host}.log",
            "--simulate-gpus", gpus, *self.agent_flags, env=env)
        self.agent_gpus[host] = gpus

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(30)

    def restart(self, name: str, sig: int = signal.SIGKILL, down_s: float = 0.0) -> None:
        """Kill `name` ("nats", "gateway", "agent-HOST") and start it again on the same data."""
        self.kill(name, sig)
        time.sleep(down_s)
        if name == "nats":
            self.start_nats()
        elif name == "gateway":
            self.start_gateway()
        else:
            host = name.removeprefix("agent-")
            self.start_agent(host, self.agent_gpus[host])

    def wait_online(self, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.api.client.get("/system/status").json()["hosts_online"] == count:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{count} hosts not online within {timeout_s}s"
            time.sleep(0.1)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: object = None
        while True:
            try:
                last = httpx.get(f"{self.api.base}/health", timeout=2).json()
                if last["status"] == "ok":
                    return
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            assert time.monotonic() < deadline, f"gateway not healthy: {last}"
            time.sleep(0.1)

    def busy_gpus(self) -> list[dict]:
        return [g for g in self.api.client.get("/gpus").json()["gpus"] if g["state"] != "free"]

    def stop(self) -> None:
        self.api.client.close()
        self.stack.stop()



async def publish_commands(nats_url: str, options: dict[str, str], subject: str, *commands: msgspec.Struct) -> None:
    """Publish commands straight to the command stream, as the gateway would (gateway user)."""
    nc = await nats_py.connect(nats_url, **options)
    js = nc.jetstream()
    for command in commands:
        await js.publish(subject, msgspec.json.encode(command))
    await nc.close()


@contextmanager
def started_rig(tmp: Path, agents: dict[str, str]) -> Iterator[Rig]:
    """A Rig with `agents` (host -> --simulate-gpus) up and ready; stopped afterwards."""
    rig = Rig(tmp)
    try:
        rig.start(agents)
        yield rig
    finally:
        rig.stop()


@contextmanager
def trainyard_up(*args: str) -> Iterator[str]:
    """`trainyard up ARGS...` as a user runs it: yields its banner once printed (up is up then),
    and stops it with Ctrl-C (SIGINT) afterwards."""
    up = subprocess.Popen([sys.executable, "-m", "trainyard", "up", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        said = []
        for line in up.stdout:
            said.append(line)
            if line.startswith("Ctrl-C stops trainyard"):  # the banner's last line
                break
        else:
            raise AssertionError(f"up never said it was up: {''.join(said)}")
        yield "".join(said)
    finally:
        up.send_signal(signal.SIGINT)
        up.communicate(timeout=60)

