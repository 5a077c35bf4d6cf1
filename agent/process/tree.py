"""Process-tree operations: spawn in a new session, signal the group, kill what was recorded,
learn how a trainer ended even across an agent restart.

A process is named by (pid, create_time) so a recycled PID is never signalled by mistake.

A trainer runs under a keeper, forked by a helper process (agent/process/keeper.py says why); the
agent waits for the keeper to go and reads the exit status it wrote.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from agent.process.keeper import EXIT_STATUS_FILE, read_keeper_pid

if TYPE_CHECKING:
    from agent.trainers.base import LaunchContext


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


def read_exit_status(run_dir: Path) -> int | None:
    """The trainer's return code as its keeper wrote it; None if the keeper did not get to. The
    file is written in place before it is renamed: where the rename failed (a full disk), the
    code is in the reserved `.tmp` file."""
    for name in (EXIT_STATUS_FILE, EXIT_STATUS_FILE + ".tmp"):
        try:
            return int((run_dir / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def recorded_keeper(run_dir: Path) -> ProcRef | None:
    """The keeper that claimed `run_dir` by its record; None when it has no keeper record."""
    pid = read_keeper_pid(str(run_dir))
    return keeper_of(run_dir, pid) if pid is not None else None


def keeper_of(run_dir: Path, pid: int) -> ProcRef:
    """Keeper `pid` of `run_dir`: alive only while that pid still is a process whose working dir
    is the run dir (a keeper's is), so a recycled pid is never taken for it."""
    try:
        proc = psutil.Process(pid)
        if Path(proc.cwd()).resolve() == run_dir.resolve():
            return ProcRef(pid, proc.create_time())
    except (psutil.Error, OSError):
        pass
    return ProcRef(pid, 0.0)  # gone: its exit status file says how the trainer ended


async def wait_gone(ref: ProcRef, poll_s: float = 0.05) -> None:
    """Until `ref` has ended. Reaps it if it is this process's child (the keeper is); a pidfd
    wakes the loop at once where the kernel has them, else it polls."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(ref.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        if pidfd is not None and ref.is_alive():
            gone = loop.create_future()
            loop.add_reader(pidfd, _settle, gone)
            try:
                await gone
            finally:
                loop.remove_reader(pidfd)
        else:
            while ref.is_alive():
                await asyncio.sleep(poll_s)
    finally:
        if pidfd is not None:
            os.close(pidfd)
        try:
            os.waitpid(ref.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not ours (an adopted keeper) or already reaped


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


def tagged(job_id: str, attempt: int) -> set[ProcRef]:
    """Every live process carrying the attempt's TRAINYARD_JOB_ID / TRAINYARD_ATTEMPT in its
    environment: the trainer's descendants, also those that left its session and were never
    seen as its children (a daemonised worker). Reads /proc; run it off the event loop."""
    want = {"TRAINYARD_JOB_ID": job_id, "TRAINYARD_ATTEMPT": str(attempt)}
    found = set()
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            if all(env.get(k) == v for k, v in want.items()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(ProcRef(proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return found


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


def child_env(launch_env: dict[str, str], ctx: LaunchContext) -> dict[str, str]:
    # The agent's own TRAINYARD_* settings (NATS URL, credentials) are not the trainer's business.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(launch_env)
    # trainyard's own variables go last: a job's env cannot widen its GPUs or pose as another
    # job (the release finds an attempt's processes by TRAINYARD_JOB_ID/ATTEMPT).
    env.update(
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in ctx.gpu_ids),
        TRAINYARD_JOB_ID=ctx.job_id,
        TRAINYARD_ATTEMPT=str(ctx.attempt),
        TRAINYARD_RUN_DIR=str(ctx.run_dir),
    )
    if ctx.resume_from:
        env["TRAINYARD_RESUME_FROM"] = ctx.resume_from  # for scripts that resume by themselves
    return env


def _settle(future: asyncio.Future[None]) -> None:
    """Complete `future` once (a reader callback may fire again before it is removed)."""
    if not future.done():
        future.set_result(None)
