"""The `hf` trainer: a user script that trains with transformers' Trainer.

Run by the agent's Python (or the interpreter the agent is configured with), in the job's run
dir unless `cwd` is given. Progress comes from the tqdm bar; metrics and checkpoints from the
Trainer itself, through a hook on the trainer's PYTHONPATH (hf_hook/sitecustomize.py: each log
with the Trainer's own step, each save with its path), else from the printed dicts and the
`checkpoint-N` directories in the script's `--output_dir`.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.trainers.base import Launch, LaunchContext, LaunchError, OutputParser
from agent.trainers.parsing.trainer_parser import TrainerParser
from shared.jobspec import HfJob

HOOK_DIR = Path(__file__).resolve().parent / "hf_hook"


def flag_value(args: list[str], name: str) -> str | None:
    """`--name value` or `--name=value` in an argv list (the last one wins, as argparse does)."""
    found = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def _cwd(spec: HfJob, ctx: LaunchContext) -> Path:
    return Path(spec.cwd) if spec.cwd else ctx.run_dir


class HfAdapter:
    name = "hf"

    def build_launch(self, spec: HfJob, ctx: LaunchContext) -> Launch:
        cwd = _cwd(spec, ctx)
        if not cwd.is_dir():
            raise LaunchError(f"working directory {cwd} does not exist on host {ctx.host}")
        script = Path(spec.script) if Path(spec.script).is_absolute() else cwd / spec.script
        if not script.is_file():
            raise LaunchError(f"script {script} not found on host {ctx.host}")
        env = dict(spec.env)
        # The hook that reports each log with the Trainer's own step (hf_hook/sitecustomize.py).
        inherited = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOOK_DIR), inherited) if p)
        return Launch(argv=[ctx.python, str(script), *spec.args], cwd=cwd, env=env)

    def new_parser(self, spec: HfJob, ctx: LaunchContext) -> TrainerParser:
        output = flag_value(spec.args, "--output_dir")
        cwd = _cwd(spec, ctx)
        root = (cwd / output) if output else cwd
        steps = flag_value(spec.args, "--logging_steps")
        return TrainerParser([root], logging_steps=int(steps) if steps and steps.isdigit() else None)

    def succeeded(self, exit_code: int | None, parser: OutputParser | None) -> tuple[bool, str]:
        return (True, "") if exit_code == 0 else (False, f"exited with code {exit_code}")
