"""A job's code archive is being fetched when nats-server goes down: the agent fetches it again
once it is back, and the job runs (issue 15: "an agent that loses the object store
mid-download retries")."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from shared.workdir import pack
from tests.harness import Rig

SIZE = 60 * 1024 * 1024  # random, so gzip keeps it this big: the fetch takes a while


def test_a_code_fetch_broken_off_by_a_nats_restart_is_done_again(rig: Rig, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "blob.bin").write_bytes(os.urandom(SIZE))
    (project / "run.py").write_text("import os\nprint('blob', os.path.getsize('blob.bin'))\n")
    archive = pack(project, 200 * 1024**2)
    try:
        r = rig.api.client.post("/workdirs", content=archive.read_bytes(), timeout=120)
    finally:
        archive.unlink()
    assert r.status_code == 201, r.text
    job = rig.api.submit([sys.executable, "run.py"], workdir=r.json()["workdir"], hold=True, gpus=1)
    job_dir = rig.tmp / "work-f" / "runs" / job
    assert rig.api.client.post(f"/jobs/{job}/start").status_code == 200
    deadline = time.monotonic() + 30
    fetched = 0
    while fetched == 0:
        assert time.monotonic() < deadline, "the agent never started fetching the archive"
        fetched = sum(p.stat().st_size for p in job_dir.glob(".workdir-*")) if job_dir.exists() else 0
        time.sleep(0.002)
    rig.restart("nats", signal.SIGKILL, down_s=1.0)
    assert fetched < SIZE  # the server went down mid-fetch, not after it
    final = rig.api.wait(job, timeout_s=120)
    assert final["status"] == "succeeded", (final, rig.api.logs(job))
    assert [ln["text"] for ln in rig.api.logs(job, type="train")] == [f"blob {SIZE}"]
