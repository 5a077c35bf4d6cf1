"""Webhooks do not reach inside the network by default (security review M6): loopback,
link-local, private, unique-local and other non-public addresses are refused at submit, in
every spelling, and again at delivery; credentials in the URL are refused; `webhook_allow`
opens what a deployment trusts."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.api.auth import TOKENS_FILE, TokenStore
from gateway.webhook_policy import WebhookPolicy, WebhookRefused
from tests.conftest import Cluster
from trainyard.stack import Stack, free_port, wait_for_health

INSIDE = [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://[::1]/hook", "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.1/hook", "http://192.168.1.1/hook", "http://172.16.0.1/hook", "http://[fd00::1]/hook",
    "http://0.0.0.0/hook", "http://2130706433/hook", "http://0x7f000001/hook", "http://127.1/hook",
    "http://[::ffff:127.0.0.1]/hook", "http://100.64.0.1/hook", "https://224.0.0.1/hook",
    "http://user:pass@example.com/hook", "https://:token@example.com/hook",
]


@pytest.fixture(scope="module")
def strict_gateway(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A gateway replica with no webhook allow-list (the tests' other gateways allow loopback)."""
    data_dir = tmp_path_factory.mktemp("strict-gateway")
    token = TokenStore(data_dir / TOKENS_FILE).create("admin")
    port = free_port()
    stack = Stack(nats_dir=cluster.nats.stack.nats_dir, nats_port=cluster.nats.port)
    proc = stack.start_gateway(data_dir, port, cluster.nats.url, "--replica", "strict",
                               env={"TRAINYARD_WEBHOOK_ALLOW": ""})
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        yield httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/training",
                           headers={"Authorization": f"Bearer {token}"})
    finally:
        stack.stop()


@pytest.mark.parametrize("url", INSIDE)
def test_a_webhook_inside_the_network_is_refused_at_submit(strict_gateway: httpx.Client, cluster: Cluster,
                                                           url: str) -> None:
    name = f"refused-{secrets.token_hex(4)}"
    r = strict_gateway.post("/jobs", json={"trainer": "command", "command": ["true"], "gpus": 0, "hold": True,
                                           "webhook_url": url, "name": name})
    assert r.status_code == 422 and r.json()["field"] == "webhook_url", (url, r.text)
    # Nothing was stored: looked for by its name on the session's gateway, which is caught up (the
    # strict replica may still be replaying the session's streams, so its job count moves alone).
    time.sleep(0.2)
    assert cluster.api.client.get("/jobs", params={"q": name}).json()["total"] == 0


def test_delivery_checks_again_and_an_allow_list_opens_a_network() -> None:
    """At delivery the host is resolved again and checked (a name may resolve elsewhere by then)."""
    strict, opened = WebhookPolicy([]), WebhookPolicy(["127.0.0.0/8"])
    with pytest.raises(WebhookRefused, match="not a public address"):
        asyncio.run(strict.addresses("http://localhost:9/x"))
    host, addresses = asyncio.run(opened.addresses("http://127.0.0.1:9/x"))
    assert host == "127.0.0.1" and [str(a) for a in addresses] == ["127.0.0.1"]
    with pytest.raises(WebhookRefused, match="credentials"):
        asyncio.run(opened.addresses("http://u:p@127.0.0.1:9/x"))


def test_a_host_name_the_resolver_cannot_encode_is_refused_not_a_500() -> None:
    """The OpenAPI fuzzer's find: a host with '\\x8a' made getaddrinfo raise UnicodeError (a 500)."""
    with pytest.raises(WebhookRefused, match="not a valid host name"):
        asyncio.run(WebhookPolicy([]).addresses("http://a\x8ab.example/hook"))
