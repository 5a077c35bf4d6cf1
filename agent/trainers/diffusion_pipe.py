"""The `diffusion-pipe` trainer (reference/trainers.md §1, §4).

Launch: `deepspeed --master_port=P train.py --deepspeed --config <job>.toml --master_port P`
in the agent's diffusion-pipe checkout (agent setting `diffusion_pipe_dir`), with
`CUDA_VISIBLE_DEVICES` set to the job's GPUs and no `--num_gpus` (the launcher would otherwise
ignore CUDA_VISIBLE_DEVICES and use GPUs 0..N-1). The port is the job's own, passed to
train.py as well, because train.py overwrites MASTER_PORT with its own default.

Progress: DeepSpeed's `steps: N loss: ...` lines; epochs from `Started new epoch: N`. The total
is not printed: it is `max_steps` when the config sets it, else epochs x the steps of the first
epoch once that is over (then marked estimated). Eval losses live only in the TensorBoard files
of the run dir; they are read from there. Checkpoints: `epochN/`, `stepN/`, `global_stepN/`.
Graceful stop: a `save_quit` file in the run dir (diffusion-pipe saves its training state and
exits), then signals. Success: exit 0 **and** `TRAINING COMPLETE!` (a `save_quit` exit is 0 too).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tomli_w

from agent.output.lines import LevelClassifier, kinds
from agent.trainers.base import Launch, LaunchContext, LaunchError, OutputParser, Sink
from agent.trainers.command import resolve_executable
from agent.trainers.parsing.tfevents import EventFileReader
from agent.trainers.swift import master_port
from shared.diffusion_pipe_config import build_configs
from shared.jobspec import DiffusionPipeJob

MAIN_TOML = "diffusion_pipe.toml"
DATASET_TOML = "dataset.toml"
COMPLETE = "TRAINING COMPLETE!"

_STEPS_RE = re.compile(
    r"^steps: (\d+) loss: ([0-9.eE+-]+|nan|inf)(?P<extra>(?: [\w./-]+: [0-9.eE+-]+)*?)"
    r" iter time \(s\): ([0-9.]+) samples/sec: ([0-9.]+)"
)
_EXTRA_RE = re.compile(r" ([\w./-]+): ([0-9.eE+-]+)")
_LR_RE = re.compile(r"\[Rank 0\] step=(\d+), skipped=(\d+), lr=\[?([0-9.eE+-]+)")
_EPOCH_RE = re.compile(r"^Started new epoch: (\d+)")
_CHECKPOINT_RE = re.compile(r"^(epoch|step|global_step)(\d+)$")


def output_dir(spec: DiffusionPipeJob, ctx: LaunchContext) -> Path:
    if spec.output_dir:
        return Path(spec.output_dir)
    return (ctx.job_dir or ctx.run_dir) / "output"


def latest_run_dir(out: Path) -> Path | None:
    """diffusion-pipe's run dir: `<output_dir>/<YYYYmmdd_HH-MM-SS>` (UTC), the newest."""
    try:
        runs = sorted(p for p in out.iterdir() if p.is_dir() and p.name[:8].isdigit())
    except OSError:
        return None
    return runs[-1] if runs else None


class DiffusionPipeParser:
    def __init__(self, spec: DiffusionPipeJob, out: Path) -> None:
        self.out = out
        self.epochs = spec.config.get("epochs")
        self.max_steps = spec.config.get("max_steps")
        self.step: int | None = None
        self.epoch = 1
        self.steps_per_epoch: int | None = None
        self.completed = False
        self._classifier = LevelClassifier()
        self._seen: set[str] = set()
        self._events: dict[Path, EventFileReader] = {}

    def _total(self) -> tuple[int | None, bool]:
        if isinstance(self.max_steps, int):
            return self.max_steps, False
        if self.steps_per_epoch and isinstance(self.epochs, int):
            return self.steps_per_epoch * self.epochs, True
        return None, True

    def feed(self, stream: str, lines: list[str], transient: str | None, sink: Sink) -> None:
        keep: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            if "%|" in line and ("it/s]" in line or "s/it]" in line):
                continue  # caching / eval tqdm bars: not log lines
            keep.append(line)
            if line.startswith("steps: "):
                m = _STEPS_RE.match(line)
                if m:
                    step = int(m.group(1))
                    self.step = step
                    values = {"loss": float(m.group(2)), "iter_time_s": float(m.group(4)),
                              "samples_per_s": float(m.group(5))}
                    values.update({k: float(v) for k, v in _EXTRA_RE.findall(m.group("extra") or "")})
                    sink.metrics(step, float(self.epoch), values)
                    total, estimated = self._total()
                    sink.progress(step=step, total_steps=total, epoch=float(self.epoch),
                                  total_epochs=self.epochs if isinstance(self.epochs, int) else None,
                                  estimated=estimated)
            elif "[Rank 0] step=" in line:
                m = _LR_RE.search(line)
                if m:
                    sink.metrics(int(m.group(1)), float(self.epoch), {"lr": float(m.group(3))})
            elif line.startswith("Started new epoch: "):
                m = _EPOCH_RE.match(line)
                if m:
                    self.epoch = int(m.group(1))
                    if self.epoch == 2 and self.step and self.steps_per_epoch is None:
                        self.steps_per_epoch = self.step
            elif line.strip() == COMPLETE:
                self.completed = True
        if keep:
            text = "\n".join(keep)
            sink.logs(stream, keep, self._classifier.levels(keep, text), kinds(keep, text))

    def poll(self, sink: Sink) -> None:
        run = latest_run_dir(self.out)
        if run is None:
            return
        try:
            entries = sorted(run.iterdir())
        except OSError:
            return
        for entry in entries:
            m = _CHECKPOINT_RE.match(entry.name)
            if m and entry.is_dir() and str(entry) not in self._seen:
                self._seen.add(str(entry))
                step = int(m.group(2)) if m.group(1) != "epoch" else self.step
                sink.checkpoint(str(entry), step)
            elif entry.name.startswith("events.out.tfevents") and entry not in self._events:
                self._events[entry] = EventFileReader(entry)
        for reader in self._events.values():
            for s in reader.read():
                if s.tag != "train/loss":  # that one comes from stdout already
                    sink.metrics(s.step, None, {s.tag: s.value})


class DiffusionPipeAdapter:
    name = "diffusion-pipe"

    def build_launch(self, spec: DiffusionPipeJob, ctx: LaunchContext) -> Launch:
        checkout = ctx.options.get("diffusion_pipe_dir", "")
        if not checkout:
            raise LaunchError(f"diffusion-pipe is not set up on host {ctx.host} "
                              "(agent setting diffusion_pipe_dir)")
        train_py = Path(checkout) / "train.py"
        if not train_py.is_file():
            raise LaunchError(f"diffusion-pipe train.py not found in {checkout} on host {ctx.host}")
        env = dict(spec.env)
        deepspeed = resolve_executable("deepspeed", ctx, os.environ.get("PATH"))  # the agent's PATH, never the job's
        out = output_dir(spec, ctx)
        out.mkdir(parents=True, exist_ok=True)
        main_toml, dataset_toml = ctx.run_dir / MAIN_TOML, ctx.run_dir / DATASET_TOML
        main, data = build_configs(spec.model_type, spec.dataset, spec.config, str(out), str(dataset_toml))
        port = master_port(ctx.job_id)
        argv = [deepspeed, f"--master_port={port}", str(train_py), "--deepspeed",
                "--config", str(main_toml), "--master_port", str(port)]
        resume: str | bool | None = spec.resume_from_checkpoint
        if ctx.resume_from:  # a resume asked for through the API: "latest", or a checkpoint's path
            resume = True if ctx.resume_from == "latest" else Path(ctx.resume_from).parent.name
        if resume is True:
            argv.append("--resume_from_checkpoint")
        elif isinstance(resume, str):
            argv += ["--resume_from_checkpoint", resume]
        return Launch(argv=argv, cwd=Path(checkout), env=env, files={
            main_toml: tomli_w.dumps(main).encode(), dataset_toml: tomli_w.dumps(data).encode()})

    def new_parser(self, spec: DiffusionPipeJob, ctx: LaunchContext) -> DiffusionPipeParser:
        return DiffusionPipeParser(spec, output_dir(spec, ctx))

    def request_stop(self, spec: DiffusionPipeJob, ctx: LaunchContext) -> str | None:
        """diffusion-pipe's own graceful stop: it saves its training state and exits."""
        run = latest_run_dir(output_dir(spec, ctx))
        if run is None:
            return None
        (run / "save_quit").touch()
        return f"created {run / 'save_quit'}"

    def succeeded(self, exit_code: int | None, parser: OutputParser | None) -> tuple[bool, str]:
        if exit_code != 0:
            return False, f"exited with code {exit_code}"
        if isinstance(parser, DiffusionPipeParser) and not parser.completed:
            return False, f"exited 0 without printing {COMPLETE!r}"
        return True, ""
