"""Issue 15 as two machines: `trainyard up --listen` (gateway and nats-server) in this network
namespace, a GPU host's agent in another one that this test makes, joined by a veth pair. The
host reaches the head only at its veth address (not loopback), over TLS from up's CA, pinned by
the join command `trainyard host add` printed. Needs root and iproute2 (`.ci/run` runs as root);
elsewhere it skips and says why."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.tls import client_context
from tests.harness import trainyard_up
from trainyard.stack import free_port


@dataclass(frozen=True)
class Network:
    namespace: str  # where the GPU host lives
    head: str  # the head's address on the veth pair
    host: str  # the GPU host's address

    def exec(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *argv], **kw)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def network() -> Iterator[Network]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2's `ip` is not installed: no network namespaces (apt-get install iproute2)")
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root (CI runs as root)")
    tag = os.getpid() % 10_000
    net = Network(f"ty-host-{tag}", f"10.231.{tag % 250}.1", f"10.231.{tag % 250}.2")
    outer, inner = f"tyh{tag}", f"tyg{tag}"
    steps = [("netns", "add", net.namespace), ("link", "add", outer, "type", "veth", "peer", "name", inner),
             ("link", "set", inner, "netns", net.namespace), ("addr", "add", f"{net.head}/24", "dev", outer),
             ("link", "set", outer, "up"),
             ("netns", "exec", net.namespace, "ip", "addr", "add", f"{net.host}/24", "dev", inner),
             ("netns", "exec", net.namespace, "ip", "link", "set", inner, "up"),
             ("netns", "exec", net.namespace, "ip", "link", "set", "lo", "up")]
    try:
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot make the test's network (ip {' '.join(step)}: {done.stderr.strip()})")
        yield net
    finally:
        _ip("netns", "del", net.namespace)
        _ip("link", "del", outer)


def _trainyard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainyard", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_a_host_in_another_network_joins_over_tls_runs_shipped_code_and_is_removed(
        network: Network, tmp_path: Path) -> None:
    data_dir = tmp_path / "head"
    port, nats_port = free_port(), free_port()
    with trainyard_up("--data-dir", str(data_dir), "--port", str(port), "--nats-port", str(nats_port),
                      "--listen", network.head, "--host", "head", "--simulate-gpus", "1x80GB") as banner:
        assert f"https://{network.head}:{port}/api/v1/training" in banner, banner
        assert f"tls://{network.head}:{nats_port}  (TLS; CA sha256:" in banner, banner
        ca = data_dir / "tls" / "ca.pem"
        api = httpx.Client(base_url=f"https://{network.head}:{port}/api/v1/training", verify=client_context(ca),
                           headers={"Authorization": f"Bearer {(data_dir / 'api-token').read_text().strip()}"})

        def online(host: str) -> bool:
            return any(h["host"] == host and h["status"] == "online" for h in api.get("/hosts").json())

        # The other machine cannot reach the head on its own loopback: only through the veth.
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"
        probe = network.exec([sys.executable, "-c", connect], capture_output=True, text=True)
        assert probe.returncode != 0 and "ConnectionRefused" in probe.stderr, probe.stderr

        # A join command whose pin does not match: refused before any key is sent.
        added = _trainyard("host", "add", "impostor", "--data-dir", str(data_dir))
        argv = shlex.split(added.stdout.strip().splitlines()[-1])
        argv[argv.index("--ca-pin") + 1] = "sha256:" + "0" * 64
        refused = network.exec([sys.executable, "-m", *argv, "--work-dir", str(tmp_path / "impostor")],
                               capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and "not the pinned sha256:000" in refused.stderr, refused.stderr
        assert not (data_dir / "nats" / "hosts" / "impostor.json").exists()

        added = _trainyard("host", "add", "gpu-far", "--data-dir", str(data_dir))
        assert added.returncode == 0, added.stderr
        printed = added.stdout.strip().splitlines()[-1]
        assert f"--api-url https://{network.head}:{port}" in printed and "--ca-pin sha256:" in printed, printed
        log_path = tmp_path / "gpu-far.log"
        with open(log_path, "wb") as log:
            agent = subprocess.Popen(["ip", "netns", "exec", network.namespace, sys.executable, "-m",
                                      *shlex.split(printed), "--work-dir", str(tmp_path / "far-work"),
                                      "--simulate-gpus", "2x80GB"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not online("gpu-far"):
                assert time.monotonic() < deadline and agent.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.1)

            project = tmp_path / "project"
            project.mkdir()
            (project / "train.py").write_text(
                "import socket\nopen('result.txt', 'w').write('trained on ' + socket.gethostname())\nprint('done')\n")
            made = _trainyard("submit", "--data-dir", str(data_dir), "--json", "--host", "gpu-far", "--gpus", "0",
                              "--workdir", ".", "--", "python", "train.py", cwd=project)
            assert made.returncode == 0, made.stderr
            job = json.loads(made.stdout)["job_id"]
            deadline = time.monotonic() + 60
            while (status := api.get(f"/jobs/{job}/status").json()["status"]) not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
            assert status == "succeeded", api.get(f"/jobs/{job}/logs").json()
            out = tmp_path / "result.txt"
            got = _trainyard("download", "--data-dir", str(data_dir), job, "1/result.txt", "-o", str(out))
            assert got.returncode == 0, got.stderr
            assert out.read_text().startswith("trained on ")

            removed = _trainyard("host", "remove", "gpu-far", "--data-dir", str(data_dir))
            assert removed.returncode == 0, removed.stderr
            agent.wait(30)
            assert "nats-server refuses the identity of host gpu-far" in log_path.read_text()
            # Its key no longer opens a connection: started again, it is refused at once.
            again = network.exec([sys.executable, "-m", "trainyard", "agent", "--host", "gpu-far", "--work-dir",
                                  str(tmp_path / "far-work"), "--nats-url", f"tls://{network.head}:{nats_port}"],
                                 capture_output=True, text=True, timeout=60)
            assert again.returncode != 0 and "refuses the identity" in again.stderr, again.stderr[-2000:]
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
            api.close()
