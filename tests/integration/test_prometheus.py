"""Prometheus: the gateway's /metrics and the agent's --metrics-port, read by the library's
own text-format parser."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Rig
from trainyard.stack import free_port

AGENT_METRICS_PORT = free_port()

# Reports a step and a loss, then waits to be stopped.
REPORTS_THEN_WAITS = """
import time
print('@trainyard {"step": 7, "total_steps": 10, "metrics": {"loss": 0.25, "gpu_util": 60}}', flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    rig = Rig(tmp_path_factory.mktemp("prometheus"),
              agent_flags=("--heartbeat-interval-s", "0.5", "--metrics-port", str(AGENT_METRICS_PORT)))
    try:
        rig.start({"p": "2x80GB"})
        yield rig
    finally:
        rig.stop()


def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def until(check, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, "not reached"
        time.sleep(0.2)
    return found


def test_the_gateway_metrics_show_jobs_gpus_hosts_and_a_running_jobs_step_and_loss(rig: Rig) -> None:
    api = rig.api
    url = f"{api.base}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401  # a token is needed (a viewer's will do)
    job = api.submit([sys.executable, "-c", REPORTS_THEN_WAITS], gpus=1)
    api.wait_progress(job)
    labels = (("host", "p"), ("job_id", job), ("trainer", "command"))
    got = until(lambda: (m := scrape(url, rig.token)).get(("trainyard_job_loss", labels)) is not None and m)
    assert got[("trainyard_job_step", labels)] == 7
    assert got[("trainyard_job_progress_percent", labels)] == 70.0
    assert got[("trainyard_job_loss", labels)] == 0.25
    assert got[("trainyard_jobs", (("status", "running"), ("trainer", "command")))] == 1
    assert got[("trainyard_hosts_online", ())] == 1
    assert got[("trainyard_gpus", (("host", "p"), ("state", "busy")))] == 1
    assert got[("trainyard_gpus", (("host", "p"), ("state", "free")))] == 1
    util = until(lambda: scrape(url, rig.token).get(("trainyard_gpu_utilization_percent",
                                                    (("gpu", str(api.status(job)["gpu_ids"][0])), ("host", "p")))))
    assert util == 60.0
    assert got[("trainyard_queue_length", ())] == 0
    assert got[("trainyard_projector_ok", ())] == 1
    for kind in ("nan", "stall", "idle_gpu"):
        assert (("trainyard_anomalies", (("kind", kind),))) in got
    timed = [key for key in got if key[0] == "trainyard_http_request_duration_seconds_count"]
    routes = {dict(labels)["route"] for _, labels in timed}
    assert "/api/v1/training/jobs/{job_id}/progress" in routes, routes  # templates, not paths
    api.client.post(f"/jobs/{job}/stop")
    api.wait(job)
    after = scrape(url, rig.token)
    assert ("trainyard_job_step", labels) not in after  # only running jobs have series
    assert after[("trainyard_jobs", (("status", "stopped"), ("trainer", "command")))] == 1


def test_the_agent_metrics_count_what_it_read_and_published(rig: Rig) -> None:
    url = f"http://127.0.0.1:{AGENT_METRICS_PORT}/metrics"
    before = scrape(url)
    job = rig.api.submit([sys.executable, "-c", "for i in range(500): print(i)"])
    rig.api.wait(job)
    after = scrape(url)
    def grew(name: str) -> float:
        return after[(name, ())] - before[(name, ())]

    assert grew("trainyard_agent_lines_read_total") >= 500
    assert grew("trainyard_agent_published_messages_total") > 0
    assert grew("trainyard_agent_published_bytes_total") > 0
    assert after[("trainyard_agent_unacked_bytes", ())] == 0
    assert after[("trainyard_agent_running_attempts", ())] == 0
