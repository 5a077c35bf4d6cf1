"""Trainer adapters: one small module per trainer behind one interface (DESIGN §6)."""

from __future__ import annotations

from agent.trainers.base import Adapter, LaunchContext, Launch, OutputParser, Sink
from agent.trainers.command import CommandAdapter
from agent.trainers.diffusion_pipe import DiffusionPipeAdapter
from agent.trainers.hf import HfAdapter
from agent.trainers.swift import SwiftAdapter

ADAPTERS: dict[str, Adapter] = {
    "command": CommandAdapter(),
    "hf": HfAdapter(),
    "swift": SwiftAdapter(),
    "diffusion-pipe": DiffusionPipeAdapter(),
}


def adapter_for(trainer: str) -> Adapter:
    return ADAPTERS[trainer]


__all__ = ["Adapter", "LaunchContext", "Launch", "OutputParser", "Sink", "adapter_for"]
