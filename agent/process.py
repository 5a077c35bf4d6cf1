"""Process-tree operations: spawn in a new session, signal the group, kill what was recorded,
learn how a trainer ended even across an agent restart.

A process is named by (pid, create_time) so a recycled PID is never signalled by mistake.

A trainer is not the agent's child but its grandchild, under a *keeper*: a fork of the agent
that leads the trainer's session, ignores the stop signals sent to the group, waits for the
trainer and writes its exit status to a file in the run dir. An agent restarted while the
trainer runs (DESIGN §5) cannot wait for a process that is not its child; it waits for the
keeper to go and reads the file, so the job ends with its real exit code rather than "lost".
The keeper costs a fork, not an interpreter start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
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


EXIT_STATUS_FILE = "exit_status"
_KEEPER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def spawn_kept(argv: list[str], cwd: Path, env: dict[str, str], stdout_path: Path, stderr_path: Path) -> ProcRef:
    """Start `argv` (never through a shell) under a keeper in a new session; returns the keeper,
    which is the group leader: signal the group to reach the trainer. The keeper writes the
    trainer's Popen-style return code to `EXIT_STATUS_FILE` next to `stdout_path`."""
    status_path = stdout_path.parent / EXIT_STATUS_FILE
    status_path.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the keeper: only system calls from here on, and never a return
        code = 1
        try:
            code = _keep(argv, cwd, env, stdout_path, stderr_path, status_path)
        finally:
            os._exit(code)
    return ProcRef.of(pid) or ProcRef(pid, 0.0)


def _keep(argv: list[str], cwd: Path, env: dict[str, str], stdout_path: Path, stderr_path: Path,
          status_path: Path) -> int:
    os.setsid()
    signal.set_wakeup_fd(-1)  # the agent's event loop is not running here
    for sig in _KEEPER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)  # the agent's NATS socket and files are not the keeper's to hold
    child = os.fork()
    if child == 0:
        _exec_trainer(argv, cwd, env, stdout_path, stderr_path)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    tmp = status_path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, str(os.waitstatus_to_exitcode(status)).encode())
    os.close(fd)
    os.rename(tmp, status_path)
    return 0


def _exec_trainer(argv: list[str], cwd: Path, env: dict[str, str], stdout_path: Path, stderr_path: Path) -> None:
    try:
        for sig in (*_KEEPER_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE; a trainer must not
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        os.dup2(os.open(stdout_path, flags, 0o644), 1)
        os.dup2(os.open(stderr_path, flags, 0o644), 2)
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"trainyard: could not start {argv[0]}: {exc}\n".encode())
    os._exit(127)


def read_exit_status(run_dir: Path) -> int | None:
    """The trainer's return code as its keeper wrote it; None if the keeper did not get to."""
    try:
        return int((run_dir / EXIT_STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


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
            loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
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
