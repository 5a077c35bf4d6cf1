"""The agent's client of the keeper helper (keeper.py): started once, asked for a keeper per trainer."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from agent.process.tree import ProcRef, keeper_of


class Spawned(NamedTuple):
    keeper: ProcRef  # leads the trainer's process group
    # False: this request's keeper found the run dir claimed by the keeper of an earlier start
    # of the attempt (the agent was killed mid-spawn); that one is returned, nothing was started.
    started_here: bool


class Spawner:
    """The agent's side of agent/process/keeper.py: starts the helper once, asks it for keepers."""

    def __init__(self, after_send: Callable[[], None] | None = None) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._after_send = after_send  # the fault suite's crash point between request and answer

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.process.keeper", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]),
            )
        return self._proc

    async def spawn(self, argv: list[str], cwd: Path, env: dict[str, str], run_dir: Path, stdout_path: Path,
                    stderr_path: Path) -> Spawned:
        """Start `argv` (never through a shell) under a keeper in a new session, unless the run
        dir already has a keeper. The keeper writes the trainer's Popen-style return code to
        `EXIT_STATUS_FILE` in `run_dir`. OSError when no keeper could be started or the run dir
        holds output but no keeper record."""
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": env, "run_dir": str(run_dir),
                              "stdout": str(stdout_path), "stderr": str(stderr_path)})
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(request.encode() + b"\n")
            await proc.stdin.drain()
            if self._after_send is not None:
                self._after_send()
            line = await proc.stdout.readline()
        if not line:
            raise OSError("the spawner process exited")
        reply = json.loads(line)
        if "error" in reply:
            raise OSError(f"could not start a keeper: {reply['error']}")
        if "refused" in reply:
            raise OSError(reply["refused"])
        if "held_by" in reply:
            if not isinstance(reply["held_by"], int):
                raise OSError(f"run dir {run_dir} has an unreadable keeper record")
            return Spawned(keeper_of(run_dir, reply["held_by"]), started_here=False)
        return Spawned(ProcRef.of(reply["pid"]) or ProcRef(reply["pid"], 0.0), started_here=True)

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            await self._proc.wait()
