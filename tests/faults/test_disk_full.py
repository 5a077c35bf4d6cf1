"""Disk full (security review H5), on a small tmpfs each test mounts (root only: where it
cannot be mounted the test skips and says why). The disk is filled while trainers print, held
full a few seconds, then freed; nothing is restarted by hand.

- The projection's disk: the projector retries with back-off, /health names the real error
  ("No space left on device", not a rollback error), and it catches up by itself.
- Everything on one disk under `trainyard up` (NATS store, projection, agent state, run dirs):
  the trainers, unable to print, die and their jobs end `failed` with exit code 1 (the keeper's
  exit status was reserved when it started), no line is stored twice, nats-server (whose
  streams stay unwritable after a write error) is restarted by `up` once there is room, /health
  turns ok again and a new job runs.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Api, Rig, check_lines, paced
from trainyard.stack import free_port, wait_for_health


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs to fill ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; return it (delete it to free the disk)."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 20)
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    with contextlib.suppress(OSError), open(filler, "ab") as f:  # the last few KB
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def health(base: str) -> dict:
    try:
        return httpx.get(f"{base}/health", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return {"status": "unreachable"}


def wait_health(base: str, want: str, timeout_s: float) -> list[dict]:
    """Poll /health until its status is `want`; every answer seen, for the asserts."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while True:
        seen.append(health(base))
        if seen[-1]["status"] == want:
            return seen
        assert time.monotonic() < deadline, f"/health never {want} within {timeout_s}s: {seen[-3:]}"
        time.sleep(0.2)


def wait_lines(api: Api, job: str, lines: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while len(api.logs(job, tail=lines)) < lines:
        assert time.monotonic() < deadline, f"{job} printed fewer than {lines} lines"
        time.sleep(0.1)


def test_a_full_projection_disk_is_retried_reported_and_caught_up_by_itself(tmp_path: Path) -> None:
    with small_disk(tmp_path / "gateway", "48m") as disk:
        rig = Rig(tmp_path)
        try:
            rig.start({"d": "1x80GB"})
            job = rig.api.submit(paced(1500, 6.0), gpus=1)
            wait_lines(rig.api, job, 100)
            filler = fill(disk)
            seen = wait_health(rig.api.base, "degraded", timeout_s=20)
            time.sleep(2.0)  # full while the trainer prints on
            seen.append(health(rig.api.base))
            filler.unlink()
            seen += wait_health(rig.api.base, "ok", timeout_s=30)
            projector = [h.get("projector", "") for h in seen if h.get("projector") not in (None, "ok")]
            assert any("No space left on device" in p for p in projector), projector
            assert not any("rollback" in p for p in projector), projector
            final = rig.api.wait(job, timeout_s=30)
            assert final["status"] == "succeeded", final
            check = check_lines(rig.api, job, 1500)
            assert check.exact, check
        finally:
            rig.stop()


def test_a_full_disk_under_up_ends_the_jobs_right_and_the_stack_recovers_by_itself(tmp_path: Path) -> None:
    with small_disk(tmp_path / "data", "160m") as data_dir:
        port, nats_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        up = subprocess.Popen([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir),
                               "--port", str(port), "--nats-port", str(nats_port), "--host", "full",
                               "--simulate-gpus", "2x80GB"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_health(base, up, timeout_s=60)
            api = Api(base, (data_dir / "api-token").read_text().strip())
            jobs = [api.submit(paced(3000, 30.0), gpus=1) for _ in range(2)]
            for job in jobs:
                wait_lines(api, job, 50)
            filler = fill(data_dir)
            seen = wait_health(base, "degraded", timeout_s=30)
            time.sleep(2.0)
            filler.unlink()
            seen += wait_health(base, "ok", timeout_s=90)
            for job in jobs:
                final = api.wait(job, timeout_s=60)
                # It could not print (ENOSPC) and died of it; its keeper still recorded how.
                assert (final["status"], final["exit_code"]) == ("failed", 1), final
                check = check_lines(api, job, 3000)
                assert check.duplicates == 0 and check.out_of_order == 0 and check.stored > 0, check
            after = api.submit([sys.executable, "-c", "print('room again')"])
            assert api.wait(after, timeout_s=30)["status"] == "succeeded"
            assert [line["text"] for line in api.logs(after) if line["stream"] == "stdout"] == ["room again"]
            assert all(g["state"] == "free" for g in api.client.get("/gpus").json()["gpus"])
        finally:
            up.send_signal(signal.SIGINT)
            out, _ = up.communicate(timeout=60)
            shutil.copytree(data_dir / "logs", tmp_path / "logs")  # the disk goes with the test
        degraded = [h for h in seen if h["status"] == "degraded"]
        assert degraded, seen
        print(out[-3000:])
