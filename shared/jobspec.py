"""What a user asks for: the job request, one Struct per trainer in a tagged union.

The gateway decodes request bodies straight into `JobRequest`; the validated value is stored
verbatim in the `JobSubmitted` event and handed to the agent in the start command, so the
request, the event and the command can never disagree about a field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.watch import Action, MetricPattern, Percent, Seconds

MAX_ARGV = 256
MAX_ARG_BYTES = 8192
MAX_ENV = 128
MAX_TEXT = 2000

Priority = Annotated[int, Meta(ge=0, le=10, description="0-10, higher runs first")]
GpuCount = Annotated[int, Meta(ge=0, le=64)]
GpuIndex = Annotated[int, Meta(ge=0, le=1023)]
Arg = Annotated[str, Meta(min_length=0, max_length=MAX_ARG_BYTES)]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
EnvValue = Annotated[str, Meta(max_length=MAX_ARG_BYTES)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
HostName = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
GraceSeconds = Annotated[float, Meta(ge=0, le=3600)]
# An uploaded code archive, named by its content (shared/workdir.py).
WorkdirRef = Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
JobIdText = Annotated[str, Meta(pattern=r"^job_[0-9a-z_]{1,64}$")]


class ArraySpec(msgspec.Struct, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=1, le=1000)]


SweepKey = Annotated[str, Meta(pattern=r"^[A-Za-z_][\w.-]{0,127}$")]
SweepValues = Annotated[list[Any], Meta(min_length=1, max_length=1000)]


class JobRequestBase(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="trainer"
):
    """Fields every trainer accepts."""

    name: Text = ""
    description: Text = ""
    priority: Priority = 5
    gpus: GpuCount | None = None
    gpu_ids: Annotated[list[GpuIndex], Meta(max_length=64)] | None = None
    host: HostName | None = None
    min_gpu_memory_gb: Annotated[float, Meta(ge=0, le=4096)] | None = None
    max_retries: Annotated[int, Meta(ge=0, le=100)] = 0
    # A failed or lost attempt is retried after this many seconds, doubling with each failure
    # (capped at jobstate.RETRY_BACKOFF_CAP_S): a crash loop does not burn every retry at once.
    retry_backoff_s: Annotated[float, Meta(ge=0, le=86400)] = 10.0
    env: Annotated[dict[EnvName, EnvValue], Meta(max_length=MAX_ENV)] = {}
    hold: bool = False
    stop_grace_s: GraceSeconds = 30.0
    # Code uploaded with `POST /workdirs` (`submit --workdir DIR`): unpacked into each attempt's
    # run dir, where a command or hf job without `cwd` runs.
    workdir: WorkdirRef | None = None
    # Like Slurm's --time: past this many seconds of running, the attempt is stopped gracefully
    # and ends `failed`, "time limit of ... reached". None: no limit.
    max_runtime_s: Annotated[float, Meta(ge=1, le=365 * 86400)] | None = None
    # The watchdog (shared/watch.py): None takes the gateway's `[gateway.watch]` setting.
    nan_metrics: Annotated[list[MetricPattern], Meta(max_length=32)] | None = None
    on_nan: Action | None = None
    stall_timeout_s: Seconds | None = None
    on_stall: Action | None = None
    idle_gpu_util_pct: Percent | None = None
    idle_timeout_s: Seconds | None = None
    on_idle: Action | None = None
    # The project it counts against (quotas, fair share); its submitter counts too.
    project: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][\w.-]{0,63}$")] | None = None
    # Jobs this one waits for (gateway/scheduling/dependencies.py): until each has succeeded, or
    # with depends_mode "any_end" until each has ended. Only jobs that exist at submit.
    depends_on: Annotated[list[JobIdText], Meta(max_length=64)] = []
    depends_mode: Literal["success", "any_end"] = "success"
    # Many jobs from one request (gateway/scheduling/arrays.py): N copies, or one per combination
    # of the sweep's values; `max_parallel` of them at once. The children carry array_id (the
    # parent's id, which lists and stops them all) and array_index, set by the gateway only.
    array: ArraySpec | None = None
    sweep: Annotated[dict[SweepKey, SweepValues], Meta(max_length=16)] = {}
    max_parallel: Annotated[int, Meta(ge=1, le=1000)] | None = None
    array_id: JobIdText | None = None
    array_index: Annotated[int, Meta(ge=0)] | None = None
    # A pinned GPU that is busy: wait in the queue, or refuse the request (409, seed 000's way).
    if_busy: Literal["queue", "reject"] = "queue"
    # Told when the job ends: POSTed JSON, signed with HMAC-SHA256 (README: Webhooks).
    webhook_url: Annotated[str, Meta(pattern=r"^https?://[^\s]+$", max_length=2000)] | None = None
    # Also told when progress first reaches each of these percentages, e.g. [25, 50, 75].
    webhook_progress: Annotated[list[Annotated[int, Meta(ge=1, le=99)]], Meta(max_length=10)] = []
    # Preemption (gateway/scheduling/preemption.py): a higher-priority job that cannot start may
    # stop this one the trainer's own graceful way (preempt_grace_s to save), which puts it back
    # in the queue, without using a retry, to resume from the checkpoint it saved; at most
    # max_preemptions times, and never within min_runtime_s of its start (no thrashing).
    preemptible: bool = False
    preempt_grace_s: GraceSeconds = 60.0
    max_preemptions: Annotated[int, Meta(ge=0, le=100)] = 3
    min_runtime_s: Annotated[float, Meta(ge=0, le=86400)] = 60.0

    @property
    def trainer(self) -> str:
        """The union's tag: which adapter runs this job."""
        return self.__struct_config__.tag  # type: ignore[return-value]

    @classmethod
    def trainer_name(cls) -> str:
        """The tag of this Struct in the union (what a request's `trainer` says)."""
        return str(cls.__struct_config__.tag)

    def gpu_count(self) -> int:
        """GPUs this job needs: pinned ids win, then `gpus`, then the trainer's default."""
        if self.gpu_ids:
            return len(self.gpu_ids)
        if self.gpus is not None:
            return self.gpus
        return self.default_gpus()

    def default_gpus(self) -> int:
        return 1

    def local_paths(self) -> list[tuple[str, str]]:
        """(field, path) of every absolute local path in the request, as the gateway accepted
        it (relative ones it made absolute): what the agent confines again before launch."""
        return []


class CommandJob(JobRequestBase, tag="command"):
    """Any program, given as an argv list (never a shell string)."""

    command: Annotated[list[Arg], Meta(min_length=1, max_length=MAX_ARGV)]
    cwd: Annotated[str, Meta(max_length=4096)] | None = None

    def default_gpus(self) -> int:
        return 0

    def local_paths(self) -> list[tuple[str, str]]:
        return [("cwd", self.cwd)] if self.cwd else []


RelPath = Annotated[str, Meta(min_length=1, max_length=4096)]

# Flags of an hf script's command line (transformers' TrainingArguments and the usual data
# arguments) whose values are files or directories: confined like any path in a request.
HF_PATH_FLAGS = ("--output_dir", "--logging_dir", "--resume_from_checkpoint", "--deepspeed", "--cache_dir",
                 "--data_dir", "--train_file", "--validation_file", "--dataset_dir", "--config_file")


def path_args(args: list[str]) -> list[tuple[int, str, str]]:
    """(index of the value, flag, value) of each HF_PATH_FLAGS flag in `args` (`--f v`, `--f=v`)."""
    found = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag.lower() not in HF_PATH_FLAGS:
            continue
        if eq:
            found.append((i, flag, value))
        elif i + 1 < len(args):
            found.append((i + 1, flag, args[i + 1]))
    return found


class HfJob(JobRequestBase, tag="hf"):
    """A user script that trains with transformers' Trainer, run by the agent's Python."""

    script: RelPath
    args: Annotated[list[Arg], Meta(max_length=MAX_ARGV)] = []
    cwd: Annotated[str, Meta(max_length=4096)] | None = None

    def local_paths(self) -> list[tuple[str, str]]:
        # A relative script is one in the shipped code (workdir), inside the run dir.
        found = [*([("script", self.script)] if self.script.startswith("/") else []),
                 *([("cwd", self.cwd)] if self.cwd else [])]
        return found + [(f"args[{i}]", value) for i, _, value in path_args(self.args) if value.startswith("/")]


class SwiftJob(JobRequestBase, tag="swift"):
    """`swift sft` (ms-swift). Defaults are seed 002's fixed parameters; each can be overridden.

    `model_path` and `data_path` may be hub ids (`Qwen/Qwen2.5-VL-7B-Instruct`,
    `AI-ModelScope/coco#20000`) or local paths. A relative `output_dir` lies in the job's own
    directory on the agent, shared by its attempts (so a retry or resume finds the checkpoints).
    """

    model_path: RelPath
    data_path: RelPath
    output_dir: RelPath = "output"
    num_train_epochs: Annotated[float, Meta(gt=0, le=10_000)] = 1
    per_device_train_batch_size: Annotated[int, Meta(ge=1, le=4096)] = 1
    learning_rate: Annotated[float, Meta(gt=0, le=1)] = 1e-4
    vit_lr: Annotated[float, Meta(gt=0, le=1)] | None = 1e-5
    aligner_lr: Annotated[float, Meta(gt=0, le=1)] | None = 1e-5
    lora_rank: Annotated[int, Meta(ge=1, le=4096)] = 16
    lora_alpha: Annotated[int, Meta(ge=1, le=65536)] = 32
    gradient_accumulation_steps: Annotated[int, Meta(ge=1, le=65536)] = 4
    eval_steps: Annotated[int, Meta(ge=1)] = 100
    save_steps: Annotated[int, Meta(ge=1)] = 100
    save_total_limit: Annotated[int, Meta(ge=1)] = 2
    logging_steps: Annotated[int, Meta(ge=1)] = 5
    max_length: Annotated[int, Meta(ge=1)] = 8192
    warmup_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.05
    dataloader_num_workers: Annotated[int, Meta(ge=0, le=256)] = 4
    dataset_num_proc: Annotated[int, Meta(ge=1, le=256)] = 4
    save_only_model: bool = True
    train_type: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")] = "lora"
    torch_dtype: Annotated[str, Meta(pattern=r"^(bfloat16|float16|float32)$")] = "bfloat16"
    resume_from_checkpoint: RelPath | None = None
    # Further `swift sft` flags, as argv (e.g. ["--system", "You are ..."]); never a shell string.
    extra_args: Annotated[list[Arg], Meta(max_length=MAX_ARGV)] = []

    def local_paths(self) -> list[tuple[str, str]]:
        fields = ("model_path", "data_path", "output_dir", "resume_from_checkpoint")
        return [(f, v) for f in fields if isinstance(v := getattr(self, f), str) and v.startswith("/")]


class DiffusionPipeJob(JobRequestBase, tag="diffusion-pipe"):
    """diffusion-pipe's `train.py` under `deepspeed`, as seed 000 ran it: `model_type`,
    `dataset` (`resolutions`, `directories: [{path, num_repeats}]`, ...) and `config` (the main
    TOML's keys: `epochs`, `micro_batch_size_per_gpu`, `optimizer`, `model`, `adapter`, ...).
    `gpu_id` pins one GPU (seed 000). One `output_dir` per job, shared by its attempts."""

    model_type: Annotated[str, Meta(max_length=64)]
    dataset: dict[str, Any]
    config: dict[str, Any] = {}
    gpu_id: GpuIndex | None = None
    output_dir: RelPath | None = None
    # A run dir name under output_dir (`20250212_07-06-40`), or true for the most recent one.
    resume_from_checkpoint: Annotated[str, Meta(pattern=r"^[\w.-]{1,128}$")] | bool | None = None

    def local_paths(self) -> list[tuple[str, str]]:
        found: list[tuple[str, Any]] = []
        for i, d in enumerate(self.dataset.get("directories") or []):
            if isinstance(d, dict):
                found += [(f"dataset.directories[{i}].{k}", d.get(k)) for k in ("path", "mask_path")]
        model = self.config.get("model") or {}
        found += [(f"config.model.{k}", v) for k, v in model.items() if k.endswith("_path")]
        merge = model.get("merge_adapters")
        found += [(f"config.model.merge_adapters[{i}]", m)
                  for i, m in enumerate(merge if isinstance(merge, list) else [merge] if merge else [])]
        adapter = self.config.get("adapter")
        if isinstance(adapter, dict):
            found.append(("config.adapter.init_from_existing", adapter.get("init_from_existing")))
        for i, e in enumerate(self.config.get("eval_datasets") or []):
            if isinstance(e, dict):
                found.append((f"config.eval_datasets[{i}].config", e.get("config")))
        if self.output_dir:
            found.append(("output_dir", self.output_dir))
        return [(f, v) for f, v in found if isinstance(v, str) and v.startswith("/")]

    def __post_init__(self) -> None:
        if self.gpu_id is not None and self.gpu_ids is None:
            self.gpu_ids = [self.gpu_id]


# New trainers join this union; the tag (`trainer`) picks the Struct.
JobRequest = CommandJob | HfJob | SwiftJob | DiffusionPipeJob

# The registry of specs: trainer name -> its Struct (the gateway decodes a request by it).
SPECS: dict[str, type[JobRequest]] = {
    spec.trainer_name(): spec for spec in (CommandJob, HfJob, SwiftJob, DiffusionPipeJob)
}
TRAINERS = tuple(SPECS)
