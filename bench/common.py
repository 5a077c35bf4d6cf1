"""What the benchmarks share: a throw-away nats-server + gateway stack in a temp dir."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
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
