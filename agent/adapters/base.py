"""The adapter interface: build the launch, parse output, decide success."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from shared.jobspec import JobRequest


@dataclass(frozen=True)
class LaunchContext:
    host: str
    job_id: str
    attempt: int
    run_dir: Path
    gpu_ids: list[int]
    python: str  # the interpreter a bare `python` means on this host


@dataclass
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    files: dict[Path, bytes] = field(default_factory=dict)


class LaunchError(Exception):
    """The job cannot be launched on this host (missing executable, bad path)."""


class Sink(Protocol):
    """Where a parser sends what it understood. Implemented by the run's reporter."""

    def logs(self, stream: str, texts: list[str], levels: list[str], kinds: list[str]) -> None: ...

    def metrics(self, step: int | None, epoch: float | None, values: Mapping[str, float]) -> None: ...

    def progress(
        self,
        *,
        step: int | None,
        total_steps: int | None,
        epoch: float | None = None,
        total_epochs: int | None = None,
        estimated: bool = False,
    ) -> None: ...

    def checkpoint(self, path: str, step: int | None) -> None: ...


class OutputParser(Protocol):
    def feed(self, stream: str, lines: list[str], transient: str | None, sink: Sink) -> None: ...


class Adapter(Protocol):
    name: str

    def build_launch(self, spec: JobRequest, ctx: LaunchContext) -> Launch: ...

    def new_parser(self) -> OutputParser: ...

    def succeeded(self, exit_code: int | None, parser: OutputParser) -> tuple[bool, str]: ...
