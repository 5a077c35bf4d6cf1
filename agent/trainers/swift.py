"""The `swift` trainer: `swift sft` from ms-swift 3.x/4.x (reference/trainers.md §2).

One GPU: `CUDA_VISIBLE_DEVICES=<gpu> swift sft ...`. More: also `NPROC_PER_NODE=N` (the wrapper
then runs torchrun) and a `MASTER_PORT` of the job's own, so two jobs on one host do not collide.
`--add_version false` keeps the output where the job says, so checkpoints are found by path.
The wrapper re-runs Python in a child process that it does not forward SIGTERM to: the agent's
stop signals the whole process group and then kills every recorded descendant (DESIGN §5).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.trainers.base import Launch, LaunchContext, OutputParser
from agent.trainers.command import resolve_executable
from agent.trainers.parsing.trainer_parser import TrainerParser
from shared.ids import job_key
from shared.jobspec import SwiftJob

MASTER_PORT_BASE = 20000
MASTER_PORT_SPAN = 20000


def output_dir(spec: SwiftJob, ctx: LaunchContext) -> Path:
    out = Path(spec.output_dir)
    return out if out.is_absolute() else (ctx.job_dir or ctx.run_dir) / out


def master_port(job_id: str) -> int:
    return MASTER_PORT_BASE + job_key(job_id) % MASTER_PORT_SPAN


def latest_checkpoint(out: Path) -> Path | None:
    found = [(int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()]
    return max(found)[1] if found else None


def sft_argv(swift: str, spec: SwiftJob, out: Path, resume_from: str | None = None) -> list[str]:
    argv = [
        swift, "sft",
        "--model", spec.model_path,
        "--dataset", spec.data_path,
        "--output_dir", str(out),
        "--add_version", "false",
        "--train_type", spec.train_type,
        "--torch_dtype", spec.torch_dtype,
        "--num_train_epochs", f"{spec.num_train_epochs:g}",
        "--per_device_train_batch_size", str(spec.per_device_train_batch_size),
        "--learning_rate", f"{spec.learning_rate:g}",
        "--lora_rank", str(spec.lora_rank),
        "--lora_alpha", str(spec.lora_alpha),
        "--gradient_accumulation_steps", str(spec.gradient_accumulation_steps),
        "--eval_steps", str(spec.eval_steps),
        "--save_steps", str(spec.save_steps),
        "--save_total_limit", str(spec.save_total_limit),
        "--logging_steps", str(spec.logging_steps),
        "--max_length", str(spec.max_length),
        "--warmup_ratio", f"{spec.warmup_ratio:g}",
        "--dataloader_num_workers", str(spec.dataloader_num_workers),
        "--dataset_num_proc", str(spec.dataset_num_proc),
        "--save_only_model", "true" if spec.save_only_model else "false",
    ]
    if spec.vit_lr is not None:
        argv += ["--vit_lr", f"{spec.vit_lr:g}"]
    if spec.aligner_lr is not None:
        argv += ["--aligner_lr", f"{spec.aligner_lr:g}"]
    resume_name = resume_from or spec.resume_from_checkpoint
    if resume_name == "latest":
        latest = latest_checkpoint(out)
        resume_name = str(latest) if latest else None
    if resume_name:
        resume = Path(resume_name)
        argv += ["--resume_from_checkpoint", str(resume if resume.is_absolute() else out / resume)]
    return [*argv, *spec.extra_args]


class SwiftAdapter:
    name = "swift"

    def build_launch(self, spec: SwiftJob, ctx: LaunchContext) -> Launch:
        env = dict(spec.env)
        swift = resolve_executable("swift", ctx, os.environ.get("PATH"))  # the agent's PATH, never the job's
        out = output_dir(spec, ctx)
        out.mkdir(parents=True, exist_ok=True)
        if len(ctx.gpu_ids) > 1:
            env.setdefault("NPROC_PER_NODE", str(len(ctx.gpu_ids)))
            env.setdefault("MASTER_PORT", str(master_port(ctx.job_id)))
        return Launch(argv=sft_argv(swift, spec, out, ctx.resume_from), cwd=ctx.run_dir, env=env)

    def build_export(self, spec: SwiftJob, ctx: LaunchContext, checkpoint: str) -> Launch:
        """`swift export --adapters <checkpoint> --merge_lora true`: the merged model lands in
        `<checkpoint>-merged` (ms-swift's own choice; it refuses to overwrite one)."""
        env = dict(spec.env)
        swift = resolve_executable("swift", ctx, os.environ.get("PATH"))  # the agent's PATH, never the job's
        return Launch(argv=[swift, "export", "--adapters", checkpoint, "--merge_lora", "true"],
                      cwd=output_dir(spec, ctx), env=env, expected_output=f"{checkpoint}-merged")

    def new_parser(self, spec: SwiftJob, ctx: LaunchContext) -> TrainerParser:
        return TrainerParser([output_dir(spec, ctx)], logging_steps=spec.logging_steps)

    def succeeded(self, exit_code: int | None, parser: OutputParser | None) -> tuple[bool, str]:
        return (True, "") if exit_code == 0 else (False, f"swift exited with code {exit_code}")
