"""GPU samples older than the gateway's `gpu_samples_keep_s` leave the projection (issue 16's
paper estimate: at 1,000 hosts `gpu_samples` grows by 230 M rows a day)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.harness import started_rig


def test_old_gpu_samples_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_GPU_SAMPLES_KEEP_S", "2")
    with started_rig(tmp_path, {"r": "1x80GB"}) as rig:  # a heartbeat every 0.5 s
        started = time.time()
        time.sleep(6)

        def oldest_and_count() -> tuple[float, int]:
            rows = rig.api.client.post(f"{rig.api.base}/api/v1/sql", json={
                "sql": "SELECT min(ts_s), count(*) FROM gpu_samples"}).json()["rows"]
            return rows[0][0], rows[0][1]

        oldest, count = oldest_and_count()
        assert count > 0  # still sampling
        # Kept: the last 2 s, plus up to a pruning interval (a tenth of that) and a batch gap.
        assert oldest > time.time() - 3.5, (oldest - started, count)
