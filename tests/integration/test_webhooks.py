"""Webhooks: told once when the job ends, signed, retried, every try visible on the job."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import Cluster
from trainyard.stack import free_port


class Receiver:
    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                code = 500 if len(receiver.calls) <= receiver.fail_first else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def webhook_events(cluster: Cluster, job: str, count: int, timeout_s: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = [e["data"] for e in cluster.api.client.get(f"/jobs/{job}/events").json() if e["type"] == "webhook"]
        if len(events) >= count:
            return events
        assert time.monotonic() < deadline, events
        time.sleep(0.1)


def test_the_end_of_a_job_is_posted_once_and_signed(cluster: Cluster) -> None:
    receiver = Receiver()
    job = cluster.api.submit([sys.executable, "-c", "import sys; sys.exit(3)"], webhook_url=receiver.url)
    cluster.api.wait(job)
    [event] = webhook_events(cluster, job, 1)
    assert event["ok"] and event["final"] and event["event"] == "job.failed" and event["status_code"] == 204
    headers, body = receiver.calls[0]
    secret = (cluster.data_dir / "webhook-secret").read_text().strip()
    expected = "sha256=" + hmac.new(secret.encode(), headers["X-Trainyard-Timestamp"].encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Trainyard-Signature"], expected)
    payload = json.loads(body)
    assert (payload["job_id"], payload["status"], payload["exit_code"]) == (job, "failed", 3)
    time.sleep(1.5)  # later heartbeats and events do not tell it again
    assert len(receiver.calls) == 1


def test_a_failing_webhook_is_retried_with_backoff(cluster: Cluster) -> None:
    receiver = Receiver(fail_first=2)
    job = cluster.api.submit([sys.executable, "-c", "print('ok')"], webhook_url=receiver.url)
    cluster.api.wait(job)
    events = webhook_events(cluster, job, 3)
    assert [(e["try_number"], e["ok"], e["final"]) for e in events] == [
        (1, False, False),
        (2, False, False),
        (3, True, True),
    ]
    assert events[0]["error"] == "answered 500"
    assert len({h["X-Trainyard-Delivery"] for h, _ in receiver.calls}) == 1  # one delivery, three tries


def test_webhook_urls_must_be_http(cluster: Cluster) -> None:
    r = cluster.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "gpus": 0,
                                               "webhook_url": "file:///etc/passwd"})
    assert r.status_code == 422 and r.json()["field"] == "webhook_url"


PROGRESSING = ("import json, time\n"
               "for i in range(1, 21):\n"
               "    print('@trainyard ' + json.dumps({'step': i, 'total_steps': 20}), flush=True)\n"
               "    time.sleep(0.05)\n")


def test_progress_milestones_are_posted_once_each_then_the_end(cluster: Cluster) -> None:
    receiver = Receiver()
    job = cluster.api.submit(
        [sys.executable, "-c", PROGRESSING], webhook_url=receiver.url, webhook_progress=[75, 25, 50]
    )
    assert cluster.api.wait(job)["status"] == "succeeded"
    events = webhook_events(cluster, job, 4)
    assert sorted(e["event"] for e in events) == [
        "job.progress.25",
        "job.progress.50",
        "job.progress.75",
        "job.succeeded",
    ]
    assert all(e["ok"] and e["final"] for e in events)
    time.sleep(1.0)  # later progress and heartbeats tell it nothing again
    payloads = {json.loads(body)["event"]: json.loads(body) for _, body in receiver.calls}
    assert len(receiver.calls) == 4 and set(payloads) == {e["event"] for e in events}
    for milestone in (25, 50, 75):
        assert payloads[f"job.progress.{milestone}"]["percent"] >= milestone


def test_progress_milestones_need_a_url_and_sane_percentages(cluster: Cluster) -> None:
    base = {"trainer": "command", "command": ["true"], "gpus": 0}
    r = cluster.api.client.post("/jobs", json={**base, "webhook_progress": [50]})
    assert r.status_code == 422 and r.json()["field"] == "webhook_progress"
    r = cluster.api.client.post("/jobs", json={**base, "webhook_url": "http://127.0.0.1:9/x", "webhook_progress": [0]})
    assert r.status_code == 422 and "webhook_progress" in r.json()["field"]


def test_an_anomaly_is_posted_once_as_job_anomaly(cluster: Cluster) -> None:
    receiver = Receiver()
    diverging = ("import json\nfor s in (1, 2, 3):\n"
                 "    print('@trainyard ' + json.dumps({'step': s, 'metrics': {'loss': float('nan')}}), flush=True)\n")
    job = cluster.api.submit([sys.executable, "-c", diverging], webhook_url=receiver.url)
    cluster.api.wait(job)
    events = webhook_events(cluster, job, 2)
    assert sorted(e["event"] for e in events) == ["job.anomaly.nan.1", "job.succeeded"], events
    anomaly = next(json.loads(body) for headers, body in receiver.calls
                   if headers["X-Trainyard-Event"] == "job.anomaly")
    assert anomaly["event"] == "job.anomaly" and anomaly["job_id"] == job
    assert {k: anomaly["anomaly"][k] for k in ("kind", "metric", "step", "value")} == {
        "kind": "nan", "metric": "loss", "step": 1, "value": "nan"}
    time.sleep(1.0)
    assert len(receiver.calls) == 2  # once each: three nan lines make one anomaly
