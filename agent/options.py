"""The agent's per-attempt settings, threaded from AgentSettings to each TrainerRun as one value."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import AgentSettings
from shared.paths import Forbidden, check_roots, trainyard_own_paths

# The steps of a start where a killed agent must leave a state the next one can finish from
# without starting the trainer twice (agent/attempt/run.py: TrainerRun._launch).
CRASH_POINTS = (
    "intent_saved",  # the state file says "spawning"; no keeper asked for yet
    "spawn_sent",  # the spawner has the request; its keeper is being forked
    "spawned",  # the keeper claimed the run dir and runs the trainer; not in the state file yet
    "recorded",  # the state file names the keeper; `started` not published yet
    "started",  # `started` published; the start command not acknowledged yet
)


@dataclass(frozen=True)
class RunOptions:
    max_line_bytes: int  # a longer output line is cut into pieces of at most this many UTF-8 bytes
    batch_max_bytes: int  # a published batch of log lines or metric points stays below this
    python: str = ""  # the interpreter a bare `python` runs with; "" for the agent's own
    trainer_options: dict[str, str] = field(default_factory=dict)  # e.g. diffusion_pipe_dir
    log_cap_bytes: int = 0  # log bytes kept per attempt; 0: no cap
    # Where a job's paths may lead on this host, checked again right before launch.
    allowed_roots: tuple[str, ...] = ()
    crash_at: str = ""  # a point of CRASH_POINTS: the fault suite's deterministic kill -9
    # Sets a simulated GPU's utilisation (index, percent) from its job's `gpu_util` metric; None
    # on real GPUs (agent/attempt/watchdog.py).
    simulate_gpu_util: Callable[[int, float | None], None] | None = None

    def crash_point(self, point: str) -> None:
        """Die here, as kill -9 would kill the agent, if the fault suite asked for this point."""
        assert point in CRASH_POINTS, point
        if self.crash_at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> RunOptions:
        return cls(
            allowed_roots=tuple(agent_roots(settings)),
            max_line_bytes=settings.max_line_bytes, batch_max_bytes=settings.batch_max_bytes,
            python=settings.python, trainer_options={"diffusion_pipe_dir": settings.diffusion_pipe_dir},
            log_cap_bytes=settings.max_log_bytes_per_attempt, crash_at=settings.test_crash_at,
        )


def agent_roots(settings: AgentSettings) -> list[str]:
    """This host's allowed roots: the configured ones, or `workspace` beside the work dir (where
    `trainyard up` puts DATA/workspace). None may expose the agent's state files (each holds a
    job's full command), its NATS credentials, trainyard's Python environment or its code:
    RootNotAllowed (the agent refuses to start)."""
    work_dir = Path(settings.work_dir).resolve()
    forbidden = [Forbidden(str(work_dir / "state"), "the agent's state files"), *trainyard_own_paths()]
    if settings.nats_credentials:
        forbidden.append(Forbidden(str(Path(settings.nats_credentials).resolve().parent), "NATS credentials"))
    return check_roots(settings.allowed_roots or [str(work_dir.parent / "workspace")], forbidden)
