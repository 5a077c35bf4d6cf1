"""Webhooks: a job that names `webhook_url` is told when it ends (DESIGN §8), and, with
`webhook_progress: [25, 50, 75]`, when its progress first reaches each of those percentages
(event `job.progress.<N>`), and of each anomaly its agent's watchdog reports (event
`job.anomaly`, with the anomaly in the body).

The gateway holding the scheduler lease delivers (so one delivery per end, across replicas):
a POST of JSON with `X-Trainyard-Signature: sha256=<HMAC-SHA256 of timestamp + "." + body>`,
`X-Trainyard-Timestamp`, `X-Trainyard-Event` and `X-Trainyard-Delivery`. A non-2xx answer or no
answer is retried after 1, 2, 4 and 8 s (5 tries in all). Every try is an event on the job
(`webhook`), so deliveries show in its history; the last one says `final`, and a job is never
told the same event again once it was delivered (or its tries ran out), also after a restart.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec

from gateway.projection.projector import Projector
from gateway.webhook_policy import Unresolvable, WebhookPolicy, WebhookRefused
from gateway.writer import EventWriter
from shared import events as ev
from shared.aio import cancel_and_wait
from shared.clock import now_s

log = logging.getLogger("trainyard.webhooks")

RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)
TIMEOUT_S = 5.0
SECRET_FILE = "webhook-secret"


def load_secret(configured: str, data_dir: Path) -> str:
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def anomaly_key(anomaly: ev.JobAnomaly) -> str:
    """What a `webhook` event records for an anomaly's delivery: one per kind and attempt."""
    return f"job.anomaly.{anomaly.kind}.{anomaly.attempt}"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookNotifier:
    def __init__(self, writer: EventWriter, projector: Projector, secret: str,
                 is_leader: Callable[[], bool], policy: WebhookPolicy,
                 retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S) -> None:
        self.policy = policy
        self.projector = projector
        self.writer = writer
        self.secret = secret
        self.is_leader = is_leader
        self.retry_delays_s = retry_delays_s
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        # Delivered (or given up on) by this process: the projector learns it only once the
        # final `webhook` event comes back, and a check in between must not deliver again.
        self._finished: set[tuple[str, str]] = set()
        self._watched: dict[str, str] = {}  # job -> url, for jobs that name a webhook
        self._needs_seen = 0
        self._http = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
        projector.on_jobs_changed.append(self.check)

    def check(self) -> None:
        """Start a delivery for every event a job with a webhook has not been told yet: its
        progress milestones reached, its end."""
        if not self.is_leader():
            return
        needs = self.projector.needs
        if len(needs) != self._needs_seen:  # new jobs: find the ones with a webhook (once each)
            self._watched = {j: n.spec.webhook_url for j, n in needs.items() if n.spec.webhook_url}
            self._needs_seen = len(needs)
        for job_id, url in list(self._watched.items()):
            # The live view: the end is known here as soon as its event is decoded.
            state = self.projector.live_states.get(job_id)
            if state is None:
                continue
            percent = self.projector.percent.get(job_id)
            due = [f"job.progress.{m}" for m in sorted(needs[job_id].spec.webhook_progress)
                   if percent is not None and percent >= m]
            anomalies = {anomaly_key(a): a for a in self.projector.anomalies.get(job_id, ())}
            due += anomalies
            if state.is_terminal:
                due.append(f"job.{state.status.value}")
            for event in due:
                key = (job_id, event)
                if key in self.projector.webhooks_settled or key in self._running or key in self._finished:
                    continue
                task = asyncio.create_task(self._deliver(job_id, url, state, event, percent, anomalies.get(event)),
                                           name=f"webhook-{job_id}-{event}")
                self._running[key] = task
                task.add_done_callback(functools.partial(self._delivered, key))
            if state.is_terminal and all((job_id, e) in self.projector.webhooks_settled for e in due):
                del self._watched[job_id]

    def _delivered(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)

    async def _deliver(self, job_id: str, url: str, state, key: str, percent: float | None,
                       anomaly: ev.JobAnomaly | None = None) -> None:
        """Deliver the event `key` names (an anomaly's key names its kind and attempt; its
        receivers are told `job.anomaly` and the anomaly itself)."""
        delivery_id = f"wh_{time.time_ns():x}"
        event = "job.anomaly" if anomaly is not None else key
        body = msgspec.json.encode({
            "event": event, "delivery_id": delivery_id, "job_id": job_id, "status": state.status.value,
            "attempt": state.attempt, "host": state.host, "exit_code": state.exit_code,
            "signal": state.signal, "reason": state.reason, "started_s": state.started_s,
            "finished_s": state.finished_s, "percent": percent,
            **({"anomaly": msgspec.structs.asdict(anomaly)} if anomaly is not None else {}),
        })
        tries = len(self.retry_delays_s) + 1
        for n in range(1, tries + 1):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Trainyard-Event": event,
                       "X-Trainyard-Delivery": delivery_id, "X-Trainyard-Timestamp": timestamp,
                       "X-Trainyard-Signature": signature(self.secret, timestamp, body)}
            code, error, refused = None, "", False
            try:
                r = await self._post(url, body, headers)
                code = r.status_code
                ok = 200 <= code < 300
                error = "" if ok else f"answered {code}"
            except (httpx.HTTPError, Unresolvable) as exc:
                ok, error = False, f"{exc.__class__.__name__}: {exc}"[:300]
            except WebhookRefused as exc:  # leads inside the network now: no retry
                ok, error, refused = False, f"refused: {exc}"[:300], True
            final = ok or refused or n == tries
            await self.writer.publish(
                ev.WebhookDelivery(job_id=job_id, attempt=state.attempt, ts_s=now_s(),
                                   delivery_id=delivery_id, event=key, url=url, try_number=n,
                                   ok=ok, status_code=code, error=error, final=final),
                unique=f"{delivery_id}:{n}",
            )
            if final:
                self._finished.add((job_id, key))
                if not ok:
                    log.warning("webhook %s of %s gave up after %d tries: %s", key, job_id, n, error)
                return
            await asyncio.sleep(self.retry_delays_s[n - 1])

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST to an address the policy allows, checked now: the connection goes to that
        address; the URL's host stays the Host header and the TLS server name."""
        host, addresses = await self.policy.addresses(url)
        target = httpx.URL(url)
        pinned = target.copy_with(host=str(addresses[0]))
        return await self._http.post(pinned, content=body, headers={**headers, "Host": target.netloc.decode()},
                                     extensions={"sni_hostname": host})

    async def stop(self) -> None:
        await cancel_and_wait(list(self._running.values()))
        await self._http.aclose()
