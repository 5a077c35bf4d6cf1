"""The agent's per-attempt settings, threaded from AgentSettings to each TrainerRun as one value."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.config import AgentSettings


@dataclass(frozen=True)
class RunOptions:
    max_line_bytes: int  # a longer output line is cut into pieces of at most this many UTF-8 bytes
    batch_max_bytes: int  # a published batch of log lines or metric points stays below this
    python: str = ""  # the interpreter a bare `python` runs with; "" for the agent's own
    trainer_options: dict[str, str] = field(default_factory=dict)  # e.g. diffusion_pipe_dir
    log_cap_bytes: int = 0  # log bytes kept per attempt; 0: no cap

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> RunOptions:
        return cls(
            max_line_bytes=settings.max_line_bytes, batch_max_bytes=settings.batch_max_bytes,
            python=settings.python, trainer_options={"diffusion_pipe_dir": settings.diffusion_pipe_dir},
            log_cap_bytes=settings.max_log_bytes_per_attempt,
        )
