"""A stop is never lost (reliability, issue 13 point 0): whatever the job is doing when the stop
is applied (queued, held, just placed, starting, running), it ends, within 2 s, and never runs
to its end. Each pattern races the stop against the scheduler; STOP_RACE_CYCLES sets how often
(the note's figures used 200)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import Cluster

CYCLES = int(os.environ.get("STOP_RACE_CYCLES", "15"))
SLEEPER = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(20)"]


def _at_once(cluster: Cluster) -> str:
    return cluster.api.submit(SLEEPER)


def _after_5_ms(cluster: Cluster) -> str:
    job = cluster.api.submit(SLEEPER)
    time.sleep(0.005)
    return job


def _right_after_release(cluster: Cluster) -> str:
    job = cluster.api.submit(SLEEPER, hold=True)
    assert cluster.api.client.post(f"/jobs/{job}/start").status_code == 200
    return job


def _once_it_printed(cluster: Cluster) -> str:
    job = cluster.api.submit(SLEEPER)
    deadline = time.monotonic() + 20
    while not any(ln["text"] == "started" for ln in cluster.api.logs(job, type="train")):
        assert time.monotonic() < deadline
        time.sleep(0.002)
    return job


PATTERNS: dict[str, Callable[[Cluster], str]] = {
    "at once": _at_once, "5 ms after submit": _after_5_ms, "right after a release": _right_after_release,
    "once the trainer printed": _once_it_printed,
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_a_stop_is_never_lost(cluster: Cluster, pattern: str) -> None:
    lost = []
    for _ in range(CYCLES):
        job = PATTERNS[pattern](cluster)
        r = cluster.api.client.post(f"/jobs/{job}/stop", json={"grace_s": 5})
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 2.0
        while (status := cluster.api.status(job)["status"]) not in ("stopped", "failed", "succeeded", "lost"):
            if time.monotonic() > deadline:
                lost.append((job, status))
                cluster.api.client.post(f"/jobs/{job}/stop", json={"force": True})
                break
            time.sleep(0.01)
        else:
            assert status == "stopped", (job, status)
    assert lost == [], f"{len(lost)} of {CYCLES} stops lost: {lost[:5]}"
