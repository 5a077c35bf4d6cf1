"""The agent's client of the keeper helper (keeper.py): started once, asked for a keeper per trainer."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent.process.keeper import EXIT_STATUS_FILE
from agent.process.tree import ProcRef


class Spawner:
    """The agent's side of agent/process/keeper.py: starts the helper once, asks it for keepers."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent.process.keeper", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[2]),
            )
        return self._proc

    async def spawn(self, argv: list[str], cwd: Path, env: dict[str, str], stdout_path: Path,
                    stderr_path: Path) -> ProcRef:
        """Start `argv` (never through a shell) under a keeper in a new session; returns the
        keeper, the group leader: signal the group to reach the trainer. The keeper writes the
        trainer's Popen-style return code to `EXIT_STATUS_FILE` next to `stdout_path`."""
        status_path = stdout_path.parent / EXIT_STATUS_FILE
        status_path.unlink(missing_ok=True)
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(stdout_path),
                              "stderr": str(stderr_path), "status": str(status_path)})
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(request.encode() + b"\n")
            await proc.stdin.drain()
            line = await proc.stdout.readline()
        if not line:
            raise OSError("the spawner process exited")
        reply = json.loads(line)
        if "error" in reply:
            raise OSError(f"could not start a keeper: {reply['error']}")
        return ProcRef.of(reply["pid"]) or ProcRef(reply["pid"], 0.0)

    async def close(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            await self._proc.wait()
