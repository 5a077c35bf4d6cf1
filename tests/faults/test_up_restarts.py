"""`trainyard up` supervises its parts: one that dies is started again, and a trainer that was
running under a killed agent is re-adopted by the new one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.harness import Api, check_lines, paced
from trainyard.stack import free_port, wait_for_health


def agent_pid(host: str) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "agent" in cmd and host in cmd and "trainyard" in cmd:
            return proc.pid
    return None


def test_up_starts_a_killed_agent_again_and_the_job_finishes_intact(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port, nats_port = free_port(), free_port()
    up = subprocess.Popen([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir), "--port", str(port),
                           "--nats-port", str(nats_port), "--host", "supervised", "--simulate-gpus", "1x80GB"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", up, timeout_s=60)
        api = Api(f"http://127.0.0.1:{port}", (data_dir / "api-token").read_text().strip())
        job = api.submit(paced(600, 2.0), gpus=1)
        api.wait(job, {"running"}, timeout_s=30)
        first = agent_pid("supervised")
        assert first is not None
        psutil.Process(first).kill()
        deadline = time.monotonic() + 30
        while agent_pid("supervised") in (None, first):
            assert time.monotonic() < deadline and up.poll() is None, "the agent was not started again"
            time.sleep(0.1)
        assert api.wait(job, timeout_s=60)["status"] == "succeeded"
        assert check_lines(api, job, 600).exact
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    assert "agent-supervised exited with code -9; starting it again" in out, out


def test_a_second_up_on_the_same_data_dir_refuses_and_leaves_the_first_alone(tmp_path: Path) -> None:
    """One data dir, one `trainyard up` (user audit, rough edge 7): the second names the first
    and exits non-zero before it starts anything; the first keeps serving."""
    data_dir = tmp_path / "data"
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir), "--port", str(port),
                              "--nats-port", str(free_port()), "--host", "first"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", first, timeout_s=60)
        second = subprocess.run([sys.executable, "-m", "trainyard", "up", "--data-dir", str(data_dir),
                                 "--port", str(free_port()), "--nats-port", str(free_port()), "--host", "second"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, (second.returncode, second.stdout, second.stderr)
        assert f"in use by another trainyard up (pid {first.pid})" in second.stderr
        assert "trainyard is up" not in second.stdout
        api = Api(f"http://127.0.0.1:{port}", (data_dir / "api-token").read_text().strip())
        job = api.submit([sys.executable, "-c", "print('still here')"])
        assert api.wait(job, timeout_s=30)["status"] == "succeeded"
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
