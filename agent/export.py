"""A job's export step (swift: `swift export --adapters <checkpoint> --merge_lora true`), run on
the host that holds the checkpoint and reported as `export_finished` with the result path.

Its output goes to files beside the job's runs (`exports/<export_id>/`); the event carries the
last lines, so a failure says why without anyone logging in to the host.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

from nats.js import JetStreamContext

from agent.process import tree as process
from agent.publisher import publish
from agent.trainers import Exports, LaunchContext, adapter_for
from agent.trainers.base import LaunchError
from shared import events as ev
from shared.clock import now_s
from shared.commands import ExportJob

log = logging.getLogger("trainyard.agent.export")

LAST_LINES = 20
_MERGED_RE = re.compile(r"Successfully merged LoRA and saved in (\S+?)\.?$", re.MULTILINE)


async def run_export(js: JetStreamContext, command: ExportJob, ctx: LaunchContext) -> None:
    out_dir = (ctx.job_dir or ctx.run_dir) / "exports" / command.export_id
    done_marker = out_dir / "finished"
    if done_marker.exists():
        log.info("export %s already ran; ignored", command.export_id)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = out_dir / "stdout.log", out_dir / "stderr.log"
    adapter = adapter_for(command.spec.trainer)
    path, reason = None, ""
    outcome: Literal["succeeded", "failed"] = "failed"
    try:
        if not isinstance(adapter, Exports):
            raise LaunchError(f"a {command.spec.trainer} job has no export step")
        launch = adapter.build_export(command.spec, ctx, command.checkpoint)
        proc = await process.spawn(
            launch.argv, launch.cwd, process.child_env(launch.env, ctx), stdout_path, stderr_path
        )
        code = await proc.wait()
        text = stdout_path.read_text(errors="replace") + "\n" + stderr_path.read_text(errors="replace")
        m = _MERGED_RE.search(text)
        if code == 0 and m:
            outcome, path = "succeeded", m.group(1)
        elif code == 0 and launch.expected_output and Path(launch.expected_output).exists():
            outcome, path = "succeeded", launch.expected_output
        else:
            _, _, words = process.describe_exit(code)
            reason = f"export {words}"
        last = [ln for ln in text.splitlines() if ln.strip()][-LAST_LINES:]
    except (LaunchError, OSError) as exc:
        reason, last = str(exc), []
    done_marker.write_text(outcome)
    finished = ev.ExportFinished(job_id=command.job_id, attempt=command.attempt, ts_s=now_s(),
                                 export_id=command.export_id, outcome=outcome, path=path,
                                 reason=reason, last_lines=last if outcome == "failed" else [])
    await publish(js, finished, host=ctx.host, unique=command.export_id)


def export_context(host: str, command: ExportJob, job_dir: Path, python: str, options: dict[str, str]) -> LaunchContext:
    return LaunchContext(host=host, job_id=command.job_id, attempt=command.attempt,
                         run_dir=job_dir / str(command.attempt), gpu_ids=[], python=python,
                         job_dir=job_dir, options=options)



