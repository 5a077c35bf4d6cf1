"""Process-tree operations: spawn in a new session, signal the group, kill what was recorded.

A process is named by (pid, create_time) so a recycled PID is never signalled by mistake.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcRef:
    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcRef | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except psutil.Error:
            return None

    def is_alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return proc.create_time() == self.create_time and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def kill(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            if proc.create_time() == self.create_time:
                proc.kill()
        except psutil.Error:
            pass


async def spawn(
    argv: list[str], cwd: Path, env: dict[str, str], stdout_path: Path, stderr_path: Path
) -> asyncio.subprocess.Process:
    """argv only, never a shell; own session so signals reach the whole group."""
    with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def descendants(root: ProcRef) -> set[ProcRef]:
    """The root and every live descendant, as refs."""
    refs = {root}
    try:
        proc = psutil.Process(root.pid)
        if proc.create_time() != root.create_time:
            return set()
        for child in proc.children(recursive=True):
            try:
                refs.add(ProcRef(child.pid, child.create_time()))
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return refs


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_all(pgid: int, refs: set[ProcRef]) -> None:
    """SIGKILL the process group and every recorded process (some may have left the group)."""
    signal_group(pgid, signal.SIGKILL)
    for ref in refs:
        ref.kill()


def describe_exit(returncode: int) -> tuple[int | None, int | None, str]:
    """(exit_code, signal, words) from a Popen-style return code."""
    if returncode < 0:
        sig = -returncode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return None, sig, f"killed by {name}"
    return returncode, None, f"exited with code {returncode}"
