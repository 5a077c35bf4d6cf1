"""The adapter interface: build the launch, parse output, decide success."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from shared.jobspec import JobRequest

# The job spec an adapter takes: each adapter is an Adapter[its own spec Struct].
SpecT = TypeVar("SpecT", bound=JobRequest, contravariant=True)


@dataclass(frozen=True)
class LaunchContext:
    host: str
    job_id: str
    attempt: int
    run_dir: Path
    gpu_ids: list[int]
    python: str  # the interpreter a bare `python` (and an `hf` script) runs with on this host
    job_dir: Path | None = None  # shared by the job's attempts: outputs a retry must find
    options: dict[str, str] = field(default_factory=dict)  # agent settings for trainers (e.g. diffusion_pipe_dir)
    resume_from: str | None = None  # a checkpoint (path; "latest": the most recent) to resume from


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, bytes] = field(default_factory=dict)
    expected_output: str | None = None  # an export's result, when the program does not print it


class LaunchError(Exception):
    """The job cannot be launched on this host (missing executable, bad path)."""


class Sink(Protocol):
    """Where a parser sends what it understood. Implemented by the run's reporter."""

    def logs(self, stream: str, texts: list[str], levels: list[str], kinds: list[str]) -> None: ...

    def metrics(self, step: int | None, epoch: float | None, values: Mapping[str, float]) -> None: ...

    def metric_points(self, steps: list[int | None], epochs: list[float | None], names: list[str],
                      values: list[float]) -> None:
        """Many points at once, column-wise (point i is steps[i], epochs[i], names[i], values[i]):
        a parser that reads a whole chunk of reports hands them over in one call."""

    def progress(
        self,
        *,
        step: int | None,
        total_steps: int | None,
        epoch: float | None = None,
        total_epochs: int | None = None,
        estimated: bool = False,
        rate_steps_s: float | None = None,
        eta_s: float | None = None,
    ) -> None:
        """Rate and ETA as the trainer states them; when it does not, the reporter derives
        them from the steps seen over time (and marks them estimated)."""

    def checkpoint(self, path: str, step: int | None) -> None: ...


class OutputParser(Protocol):
    def feed(self, stream: str, lines: list[str], transient: str | None, sink: Sink) -> None: ...

    def poll(self, sink: Sink) -> None:
        """Called about once a second and at exit, for what files rather than lines show."""


class Adapter(Protocol[SpecT]):
    """What every trainer module provides. `succeeded` gets the parser `new_parser` made."""

    name: str

    def build_launch(self, spec: SpecT, ctx: LaunchContext) -> Launch: ...

    def new_parser(self, spec: SpecT, ctx: LaunchContext) -> OutputParser: ...

    def succeeded(self, exit_code: int | None, parser: OutputParser | None) -> tuple[bool, str]: ...


@runtime_checkable
class StopsGracefully(Protocol):
    """An adapter whose trainer has its own way to stop (diffusion-pipe: a `save_quit` file).
    Returns what it did, or None when it cannot."""

    def request_stop(self, spec: Any, ctx: LaunchContext) -> str | None: ...


@runtime_checkable
class Exports(Protocol):
    """An adapter with an export step (swift: merge a checkpoint's LoRA into the base model)."""

    def build_export(self, spec: Any, ctx: LaunchContext, checkpoint: str) -> Launch: ...


# An adapter of any trainer, as the registry hands it out (dispatch is by the spec's trainer).
AnyAdapter = Adapter[Any]
