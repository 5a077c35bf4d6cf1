"""The `trainyard` client commands against the live gateway, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import Cluster, cli


def test_submit_follow_list_show_and_errors(cluster: Cluster) -> None:
    made = cli(cluster, "submit", "--json", "--name", "from-cli", "--", sys.executable, "-c",
               "import time\nfor i in range(3): print('tick', i, flush=True); time.sleep(0.1)")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)["job_id"]
    followed = cli(cluster, "logs", job, "-f", "--type", "train")
    assert followed.returncode == 0 and followed.stdout.splitlines() == ["tick 0", "tick 1", "tick 2"]
    assert "-- job succeeded" in followed.stderr
    listed = json.loads(cli(cluster, "list", "--json", "--limit", "5").stdout)
    assert job in [j["job_id"] for j in listed["jobs"]]
    table = cli(cluster, "list", "--limit", "5")
    assert table.returncode == 0 and "from-cli" in table.stdout
    shown = json.loads(cli(cluster, "show", job, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["name"] == "from-cli"
    events = json.loads(cli(cluster, "events", job, "--json").stdout)
    assert [e["type"] for e in events if e["type"] in ("submitted", "exited")] == ["submitted", "exited"]
    for command in (("hosts",), ("gpus",), ("queue",), ("sql", "SELECT count(*) AS n FROM jobs")):
        out = cli(cluster, *command)
        assert out.returncode == 0, (command, out.stderr)
    assert json.loads(cli(cluster, "sql", "SELECT 41 + 1 AS answer", "--json").stdout)["rows"] == [[42]]
    again = cli(cluster, "stop", job)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "409" in again.stderr
    missing = cli(cluster, "show", "job_nope")
    assert missing.returncode == 1 and "404" in missing.stderr
    unreachable = subprocess.run([sys.executable, "-m", "trainyard", "list", "--url", "http://127.0.0.1:9"],
                                 capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stderr
