"""Trainer adapters: one module per trainer behind one interface (DESIGN §6), and the registry.

Adding a trainer: its spec Struct in shared/jobspec.py (in the JobRequest union), its module
here (an Adapter[its spec]), and one line in ADAPTERS.
"""

from __future__ import annotations

from agent.trainers.base import (
    Adapter,
    AnyAdapter,
    Exports,
    Launch,
    LaunchContext,
    OutputParser,
    Sink,
    StopsGracefully,
)
from agent.trainers.command import CommandAdapter
from agent.trainers.diffusion_pipe import DiffusionPipeAdapter
from agent.trainers.hf import HfAdapter
from agent.trainers.swift import SwiftAdapter
from shared.jobspec import CommandJob, DiffusionPipeJob, HfJob, SwiftJob

_command: Adapter[CommandJob] = CommandAdapter()
_hf: Adapter[HfJob] = HfAdapter()
_swift: Adapter[SwiftJob] = SwiftAdapter()
_diffusion_pipe: Adapter[DiffusionPipeJob] = DiffusionPipeAdapter()

# trainer name (the spec's tag) -> its adapter; mypy checks each against its spec above.
ADAPTERS: dict[str, AnyAdapter] = {
    CommandJob.trainer_name(): _command,
    HfJob.trainer_name(): _hf,
    SwiftJob.trainer_name(): _swift,
    DiffusionPipeJob.trainer_name(): _diffusion_pipe,
}


def adapter_for(trainer: str) -> AnyAdapter:
    return ADAPTERS[trainer]


__all__ = ["ADAPTERS", "Adapter", "AnyAdapter", "Exports", "Launch", "LaunchContext", "OutputParser", "Sink",
           "StopsGracefully", "adapter_for"]
