"""Ports for the processes a stack starts (trainyard/stack.py free_port)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trainyard.stack import free_port

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_free_ports_are_outside_the_range_outgoing_connections_take_and_never_repeat() -> None:
    """A port from the ephemeral range can be taken by any outgoing connection between the pick
    and the bind: a nats-server of the suite failed to start that way ("address already in
    use"). Two ports picked before either is bound must differ too."""
    if not RANGE.exists():
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here (not Linux)")
    low = int(RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert all(port < low for port in ports), [p for p in ports if p >= low][:5]
    assert len(set(ports)) == len(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # and it is free
