"""A schema-driven run over the gateway's own OpenAPI document (schemathesis + hypothesis):
no input, however odd, gets a 5xx. Its own stack (nats-server, gateway; no agent), an operator
token (so no `command` job, which needs admin, can be made from random input). Streams (they
follow a job until it ends) and the queue processor switch (it would pause this stack) are
left out."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from gateway.api.auth import TOKENS_FILE, TokenStore  # noqa: E402
from trainyard.stack import Stack, free_port  # noqa: E402


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="ty-fuzz-"))
    stack = Stack()
    nats_port, port = free_port(), free_port()
    try:
        stack.start_nats(tmp / "nats", nats_port)
        (tmp / "gw").mkdir()
        token = TokenStore(tmp / "gw" / TOKENS_FILE).create("operator")
        stack.start_gateway(tmp / "gw", port, f"nats://127.0.0.1:{nats_port}")
        yield f"http://127.0.0.1:{port}", token
    finally:
        stack.stop()


def test_no_input_gets_a_5xx(live: tuple[str, str]) -> None:
    """Every operation, 25 generated requests each (schemathesis builds them from the schema;
    hypothesis drives them). Driven by hand rather than by schemathesis' pytest plugin, which
    does not load under this pytest."""
    base, token = live
    raw = httpx.get(f"{base}/docs/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw).exclude(path_regex=r"(/stream$|/queue/processor/(start|stop)$)")
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    count = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def exercise(case) -> None:
            nonlocal count
            response = case.call(base_url=base, headers=headers, timeout=30)
            count += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:200]}")

        exercise()
    assert count > 100
    assert not failures, "\n".join(failures[:20])


def test_request_bodies_the_routes_decode_themselves_are_documented(live: tuple[str, str]) -> None:
    paths = httpx.get(f"{live[0]}/docs/openapi.json").json()["paths"]
    job = paths["/api/v1/training/jobs"]["post"]["requestBody"]
    alternatives = job["content"]["application/json"]["schema"]["anyOf"]
    assert {alt["properties"]["trainer"]["enum"][0] for alt in alternatives} == {
        "command",
        "hf",
        "swift",
        "diffusion-pipe",
    }
    assert job["required"] is True
    for path in ("/api/v1/training/jobs/{job_id}/stop", "/api/v1/training/jobs/{job_id}/resume",
                 "/api/v1/training/jobs/{job_id}/export", "/api/v1/sql", "/api/v1/training/start",
                 "/api/v1/training/stop/{task_id}"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["type"] == "object" and body["properties"], path
