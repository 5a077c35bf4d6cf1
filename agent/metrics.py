"""The agent's own metrics (`trainyard agent --metrics-port N`), in Prometheus's text format
through `prometheus_client`: what it read, what it published, what waits for an acknowledgement.

The counts are bumped where the work happens (the reporter, the publisher) on one object,
`COUNTS`; the scrape endpoint is a tiny HTTP server on the agent's own event loop, so reading
the runs' backlogs needs no lock. Loopback by default (`metrics_bind`): it carries no secrets,
but it is not meant for the world either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("trainyard.agent.metrics")


@dataclass
class Counts:
    lines_read: int = 0  # output lines of trainers turned into log rows
    metric_points: int = 0
    published_messages: int = 0  # acknowledged by the server
    published_bytes: int = 0
    publish_retries: int = 0


COUNTS = Counts()  # the process's one tally (a counter, never configuration)


class AgentCollector(Collector):
    def __init__(self, backlog: Callable[[], tuple[int, int]]) -> None:
        self.backlog = backlog  # (unacknowledged bytes, running attempts), read at scrape time

    def collect(self) -> Iterable[Metric]:
        for name, what in (("lines_read", "Trainer output lines read into log rows"),
                           ("metric_points", "Metric points parsed from trainer output"),
                           ("published_messages", "Messages the server acknowledged"),
                           ("published_bytes", "Payload bytes the server acknowledged"),
                           ("publish_retries", "Publishes tried again (NATS away or slow)")):
            yield CounterMetricFamily(f"trainyard_agent_{name}", what, value=getattr(COUNTS, name))
        unacked, running = self.backlog()
        yield GaugeMetricFamily("trainyard_agent_unacked_bytes", "Log and metric bytes read, not yet acknowledged",
                                value=unacked)
        yield GaugeMetricFamily("trainyard_agent_running_attempts", "Attempts this agent watches", value=running)


async def serve_metrics(bind: str, port: int, backlog: Callable[[], tuple[int, int]]) -> asyncio.Server:
    """Answer any GET with the metrics (Prometheus asks for /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(backlog))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5.0):
                request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET "):
                body = generate_latest(registry)
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            else:
                body = b"only GET\n"
                head = f"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, bind, port)
    log.info("agent metrics on http://%s:%d/metrics", bind, port)
    return server
