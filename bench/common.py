"""What the benchmarks share: a throw-away nats-server + gateway stack in a temp dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.api.auth import TOKENS_FILE, TokenStore
from trainyard.stack import Stack, free_port


@dataclass
class BenchStack:
    tmp: Path
    stack: Stack
    nats_url: str
    port: int
    token: str

    def start_gateway(self) -> httpx.Client:
        self.stack.start_gateway(self.tmp / "gw", self.port, self.nats_url)
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}/api/v1/training",
                            headers={"Authorization": f"Bearer {self.token}"}, timeout=60)


@contextmanager
def bench_stack(prefix: str) -> Iterator[BenchStack]:
    """nats-server started, an admin token made; agents and the gateway are the caller's."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    stack = Stack()
    nats_port = free_port()
    try:
        stack.start_nats(tmp / "nats", nats_port)
        (tmp / "gw").mkdir()
        token = TokenStore(tmp / "gw" / TOKENS_FILE).create("admin")
        yield BenchStack(tmp, stack, f"nats://127.0.0.1:{nats_port}", free_port(), token)
    finally:
        stack.stop()


def print_table(rows: list[tuple[str, str, str]], figure_width: int = 28) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'figure':<{figure_width}}  note")
    for name, figure, note in rows:
        print(f"{name:<{width}}  {figure:<{figure_width}}  {note}")


def submit_jobs(api: httpx.Client, body: dict, count: int, clients: int = 8) -> None:
    """POST `count` jobs from `clients` threads, each with its own connection; job i is named
    `{name}-{i}` where `body` has a name."""
    step = max(1, -(-count // clients))

    def run(start: int) -> None:
        with httpx.Client(base_url=api.base_url, headers=api.headers, timeout=60) as client:
            for i in range(start, min(count, start + step)):
                named = {**body, "name": f"{body['name']}-{i}"} if "name" in body else body
                client.post("/jobs", json=named).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(0, count, step)))

