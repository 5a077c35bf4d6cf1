"""How long the projection keeps GPU telemetry: `gpu_samples` gets a row per GPU per heartbeat
(230 M rows a day at 1,000 hosts of 8 GPUs, README "Scale"), so rows older than the gateway's
`gpu_samples_keep_s` are deleted, at most every tenth of that time (and at least every 10
minutes), by the projector on the host stream's writer thread."""

from __future__ import annotations

import duckdb

MAX_INTERVAL_S = 600.0


class GpuSampleRetention:
    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s  # 0: for ever
        self._last_s = 0.0

    def due(self, now: float) -> bool:
        if self.keep_s <= 0 or now - self._last_s < min(self.keep_s / 10, MAX_INTERVAL_S):
            return False
        self._last_s = now
        return True

    def prune(self, cursor: duckdb.DuckDBPyConnection, now: float) -> None:
        cursor.execute("DELETE FROM gpu_samples WHERE ts_s < ?", [now - self.keep_s])
