"""A GPU host joins with the command `trainyard host add` prints, runs code shipped with `submit
--workdir`, and its results come back (issue 15), on one machine: `trainyard up` on loopback, a
second agent joining it as another host would. tests/integration/test_separate_machines.py does
the same across network namespaces, with TLS."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest

from shared import subjects
from shared.nats.auth import load_credentials
from shared.workdir import object_name, pack
from tests.harness import Api, trainyard_up
from trainyard.stack import free_port

CAP = 300_000  # the gateway's workdir_max_bytes in this module


@dataclass
class Site:
    data_dir: Path
    api: Api
    url: str
    nats_port: int
    tmp: Path

    def run(self, *args: str, cwd: Path | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """`trainyard ARGS` as the admin types it on the machine `up` runs on."""
        return subprocess.run([sys.executable, "-m", "trainyard", *args], capture_output=True, text=True,
                              timeout=timeout_s, cwd=cwd or self.tmp)

    def client(self, command: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return self.run(command, "--data-dir", str(self.data_dir), *args, cwd=cwd)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("join")
    data_dir = tmp / "data"
    data_dir.mkdir()
    (data_dir / "trainyard.toml").write_text(f"[gateway]\nworkdir_max_bytes = {CAP}\n")
    port, nats_port = free_port(), free_port()
    with trainyard_up("--data-dir", str(data_dir), "--port", str(port), "--nats-port", str(nats_port),
                      "--host", "head", "--simulate-gpus", "1x80GB") as banner:
        assert f"trainyard host add NAME --data-dir {data_dir}" in banner, banner
        url = f"http://127.0.0.1:{port}"
        api = Api(url, (data_dir / "api-token").read_text().strip())
        yield Site(data_dir, api, url, nats_port, tmp)
        api.client.close()


def join_command(site: Site, host: str, *extra: str) -> list[str]:
    added = site.run("host", "add", host, "--data-dir", str(site.data_dir))
    assert added.returncode == 0, added.stderr
    printed = added.stdout.strip().splitlines()[-1]  # its last line: the command to run on the host
    argv = shlex.split(printed)
    assert argv[:4] == ["trainyard", "agent", "--host", host] and "--join" in argv, printed
    return [sys.executable, "-m", *argv, *extra]


def wait_online(api: Api, host: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(h["host"] == host and h["status"] == "online" for h in api.client.get("/hosts").json()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{host} never came online: {api.client.get('/hosts').json()}")


@pytest.fixture(scope="module")
def joined(site: Site) -> Iterator[subprocess.Popen]:
    """Host `gpu01`, joined with the printed command; its agent's output in site.tmp/gpu01.log."""
    argv = join_command(site, "gpu01", "--work-dir", str(site.tmp / "gpu01-work"), "--simulate-gpus", "2x80GB")
    with open(site.tmp / "gpu01.log", "wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_online(site.api, "gpu01")
    yield agent
    if agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)


def _project(tmp: Path) -> Path:
    project = tmp / "project"
    (project / "conf").mkdir(parents=True, exist_ok=True)
    (project / "train.py").write_text(
        "import os, pathlib\n"
        "size = int(open('conf/size.txt').read())\n"
        "pathlib.Path('out').mkdir(exist_ok=True)\n"
        "pathlib.Path('out/model.bin').write_bytes(bytes(i % 251 for i in range(size)))\n"
        "print('cwd is the run dir:', os.getcwd().endswith('/1'), 'weights shipped:', os.path.exists('w.ckpt'))\n")
    (project / "conf" / "size.txt").write_text("5000000")
    (project / "w.ckpt").write_bytes(b"\0" * 1000)
    (project / ".gitignore").write_text("*.ckpt\n")
    return project


def test_a_joined_host_runs_shipped_code_and_its_files_come_back(site: Site, joined: subprocess.Popen) -> None:
    listed = site.run("host", "list", "--data-dir", str(site.data_dir))
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("gpu01 "))
    assert row[1:3] == ["online", "nkey"], listed.stdout  # its state, as the gateway shows it
    project = _project(site.tmp)
    made = site.client("submit", "--json", "--host", "gpu01", "--gpus", "0", "--workdir", ".", "--",
                       "python", "train.py", cwd=project)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    assert site.api.wait(job)["status"] == "succeeded", site.api.logs(job)
    assert [ln["text"] for ln in site.api.logs(job, type="train")] == [
        "cwd is the run dir: True weights shipped: False"]
    files = site.client("files", job, "--json")
    assert files.returncode == 0, files.stderr
    listing = {f["path"]: f["size"] for f in json.loads(files.stdout)["files"]}
    assert listing["1/out/model.bin"] == 5_000_000 and "1/train.py" in listing and "1/w.ckpt" not in listing
    expected = bytes(i % 251 for i in range(5_000_000))
    out = site.tmp / "model.bin"
    got = site.client("download", job, "1/out/model.bin", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == expected
    # A download that broke off resumes from its .part: only the rest is fetched.
    out.unlink()
    Path(f"{out}.part").write_bytes(expected[:1_234_567])
    got = site.client("download", job, "1/out/model.bin", "-o", str(out))
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == expected
    r = site.api.client.get(f"/jobs/{job}/files/1/out/model.bin", headers={"Range": "bytes=4999990-"})
    assert r.status_code == 206 and r.content == expected[4_999_990:], r.status_code
    assert r.headers["content-range"] == "bytes 4999990-4999999/5000000"
    r = site.api.client.get(f"/jobs/{job}/files/1/out/model.bin", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == expected[10:20]
    for bad in ("bytes=5000000-", "bytes=20-10"):
        r = site.api.client.get(f"/jobs/{job}/files/1/out/model.bin", headers={"Range": bad})
        assert r.status_code == 416, (bad, r.status_code, r.text)
    r = site.api.client.get(f"/jobs/{job}/files/1/out/model.bin", headers={"Range": "lines=1-2"})
    assert r.status_code == 400 and "bytes=START-" in r.json()["detail"], r.text


def test_a_retry_runs_the_same_shipped_code_again(site: Site, joined: subprocess.Popen) -> None:
    project = site.tmp / "flaky"
    project.mkdir()
    (project / "flaky.py").write_text("import os, sys\nattempt = os.path.basename(os.getcwd())\n"
                                      "print('attempt', attempt)\nsys.exit(0 if attempt == '2' else 3)\n")
    made = site.client("submit", "--json", "--host", "gpu01", "--gpus", "0", "--max-retries", "1", "--workdir", ".",
                       "--", "python", "flaky.py", cwd=project)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    final = site.api.wait(job, timeout_s=60)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    assert [ln["text"] for ln in site.api.logs(job, type="train")] == ["attempt 1", "attempt 2"]


def test_an_hf_script_in_the_shipped_code_runs_from_the_run_dir(site: Site, joined: subprocess.Popen) -> None:
    project = site.tmp / "hf-project"
    (project / "scripts").mkdir(parents=True)
    (project / "scripts" / "train.py").write_text(
        "import os\nprint('hf script ran in', os.path.basename(os.getcwd()))\n")
    archive = pack(project)
    try:
        ref = site.api.client.post("/workdirs", content=archive.read_bytes()).json()["workdir"]
    finally:
        archive.unlink()
    r = site.api.client.post("/jobs", json={"trainer": "hf", "script": "scripts/train.py", "workdir": ref,
                                            "host": "gpu01", "gpus": 0})
    assert r.status_code == 201, r.text
    job = r.json()["job_id"]
    assert site.api.wait(job)["status"] == "succeeded", site.api.logs(job)
    assert [ln["text"] for ln in site.api.logs(job, type="train")] == ["hf script ran in 1"]
    r = site.api.client.post("/jobs", json={"trainer": "hf", "script": "../x.py", "workdir": ref, "gpus": 0})
    assert r.status_code == 422 and r.json()["field"] == "script", r.text


def test_a_jobs_files_are_confined_to_its_dir(site: Site, joined: subprocess.Popen) -> None:
    job = site.api.submit(["sh", "-c", "ln -s /etc/hostname leak && echo ok > mine.txt"], host="gpu01", gpus=0)
    assert site.api.wait(job)["status"] == "succeeded"
    listing = site.api.client.get(f"/jobs/{job}/files").json()
    assert {f["path"] for f in listing["files"]} >= {"1/mine.txt"}
    assert "1/leak" not in {f["path"] for f in listing["files"]}
    for path, status in (("1/leak", 400), ("1/../../../../etc/hostname", 400), ("1/nothing", 404)):
        r = site.api.client.get(f"/jobs/{job}/files/{path}")
        assert r.status_code in (status, 404) and "/etc" not in r.text.replace(path, ""), (path, r.status_code, r.text)
        assert r.status_code != 200
    assert site.api.client.get(f"/jobs/{job}/files/1/mine.txt").content == b"ok\n"


def test_an_upload_over_the_cap_is_413_before_any_job_exists(site: Site, joined: subprocess.Popen) -> None:
    project = site.tmp / "too-big"
    project.mkdir()
    (project / "noise.npy").write_bytes(os.urandom(CAP + 50_000))  # random: gzip cannot shrink it
    before = site.api.client.get("/jobs", params={"limit": 1}).json()["total"]
    made = site.client("submit", "--host", "gpu01", "--gpus", "0", "--workdir", ".", "--", "true", cwd=project)
    assert made.returncode == 1 and "413" in made.stderr and "workdir_max_bytes" in made.stderr, made.stderr
    assert site.api.client.get("/jobs", params={"limit": 1}).json()["total"] == before
    # The API itself, with a body that claims less than it sends: cut off at the cap all the same.
    r = site.api.client.post("/workdirs", content=os.urandom(CAP + 1), headers={"Content-Type": "application/gzip"})
    assert r.status_code == 413, r.text
    r = site.api.client.post("/workdirs", content=b"not an archive")
    assert r.status_code == 422 and "not a gzipped tar" in r.json()["detail"], r.text
    r = site.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "workdir": "sha256:" + "0" * 64})
    assert r.status_code == 422 and r.json()["field"] == "workdir", r.text
    r = site.api.client.post("/jobs", json={"trainer": "command", "command": ["true"], "cwd": str(site.tmp),
                                            "workdir": "sha256:" + "0" * 64})
    assert r.status_code == 422 and "not both" in r.json()["detail"], r.text


def test_a_job_whose_archive_is_gone_fails_saying_so(site: Site, joined: subprocess.Popen) -> None:
    project = site.tmp / "short-lived"
    project.mkdir()
    (project / "run.py").write_text("print('never')\n")
    made = site.client("submit", "--json", "--hold", "--host", "gpu01", "--gpus", "0", "--workdir", ".", "--",
                       "python", "run.py", cwd=project)
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    ref = site.api.client.get(f"/jobs/{job}").json()["spec"]["workdir"]

    async def delete_archive() -> None:
        cred = load_credentials(site.data_dir / "nats" / "credentials" / "gateway.json")
        nc = await nats.connect(f"nats://127.0.0.1:{site.nats_port}", user=cred.user, password=cred.password,
                                inbox_prefix=cred.inbox_prefix)
        store = await nc.jetstream().object_store(subjects.WORKDIR_BUCKET)
        await store.delete(object_name(ref))
        await nc.close()

    asyncio.run(delete_archive())
    assert site.api.client.post(f"/jobs/{job}/start").status_code == 200
    final = site.api.wait(job)
    assert final["status"] == "failed" and "gone from the object store" in (final.get("reason") or ""), final


def test_a_used_token_is_refused_on_the_agents_terminal_and_nothing_is_created(site: Site) -> None:
    argv = join_command(site, "gpu02", "--work-dir", str(site.tmp / "gpu02-work"), "--simulate-gpus", "1x80GB")
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_online(site.api, "gpu02")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
    hosts_before = sorted((site.data_dir / "nats" / "hosts").iterdir())
    # The same command on another machine (another work dir): the token was good once.
    again = [*argv[:-4], "--work-dir", str(site.tmp / "elsewhere"), "--simulate-gpus", "1x80GB"]
    refused = subprocess.run(again, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "join refused (403): the join token is unknown or was used already" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted((site.data_dir / "nats" / "hosts").iterdir()) == hosts_before
    assert not (site.tmp / "elsewhere" / "identity" / "nkey.seed").exists()
    # A host that joined already: a new token only with --replace.
    refused_add = site.run("host", "add", "gpu02", "--data-dir", str(site.data_dir))
    assert refused_add.returncode == 1 and "--replace" in refused_add.stderr, refused_add.stderr


def test_removing_a_host_drops_its_connection_at_once(site: Site, joined: subprocess.Popen) -> None:
    own = site.run("host", "remove", "head", "--data-dir", str(site.data_dir))  # up's own agent: up would restart it
    assert own.returncode == 1 and "stop trainyard up instead" in own.stderr, own.stderr
    nobody = site.run("host", "remove", "nobody", "--data-dir", str(site.data_dir))
    assert nobody.returncode == 1 and "has not joined" in nobody.stderr, nobody.stderr
    removed = site.run("host", "remove", "gpu01", "--data-dir", str(site.data_dir))
    assert removed.returncode == 0, removed.stderr
    started = time.monotonic()
    joined.wait(30)  # the agent ends: its identity is refused, reconnecting cannot help
    assert time.monotonic() - started < 15
    said = (site.tmp / "gpu01.log").read_text()
    assert "nats-server refuses the identity of host gpu01" in said, said[-2000:]
    assert "gpu01" not in site.run("host", "list", "--data-dir", str(site.data_dir)).stdout
    token = (site.data_dir / "api-token").read_text().strip()
    r = httpx.get(f"{site.url}/api/v1/training/hosts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
