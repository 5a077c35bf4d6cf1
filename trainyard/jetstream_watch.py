"""`trainyard up`'s watch on JetStream: restart nats-server once a full disk has room again.

nats-server marks a stream that hit a write error (ENOSPC) as failed and keeps it so until it
restarts: every later publish to it times out, with space or without (security review H5). Its
/healthz names such a stream. `up` owns the nats-server it started, so it restarts it, but only
once the store's disk has room again (a restart into a full disk would fail the same way).
Agents and the gateway reconnect by themselves, and agents publish what they held back.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

MIN_FREE_BYTES = 64 << 20  # room the store's disk must have again before a restart
CHECK_EVERY_S = 2.0


class JetStreamWatch:
    def __init__(self, monitor_url: str, store_dir: Path) -> None:
        self.healthz_url = f"{monitor_url}/healthz"
        self.store_dir = store_dir
        self._next_check = 0.0

    def restart_reason(self) -> str | None:
        """Why nats-server should be restarted now, or None. Cheap to call often."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_EVERY_S
        error = self._write_error()
        if error is None:
            return None
        free = shutil.disk_usage(self.store_dir).free
        if free < MIN_FREE_BYTES:
            return None
        return f"nats-server reports {error}; its disk has {free >> 20} MB free again"

    def _write_error(self) -> str | None:
        """The write error /healthz reports, if any."""
        try:
            with urllib.request.urlopen(self.healthz_url, timeout=1.0) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # 503 carries the reason
            try:
                body = json.load(exc)
            except ValueError:
                return None
        except (OSError, ValueError):
            return None  # not up (yet): the supervisor's business
        error = str(body.get("error", "")) if isinstance(body, dict) else ""
        return error if "write error" in error else None
