"""The fault suite's rig: its own nats-server, gateway and agent, so that killing them touches
no other test. Timeouts are short, but the lost grace is long enough for an agent restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Rig, started_rig


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with started_rig(tmp_path_factory.mktemp("faults"), {"f": "2x80GB"}) as rig:
        yield rig
