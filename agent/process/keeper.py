"""Trainers' keepers, forked by a small helper process instead of by the agent.

A trainer runs under a *keeper*: a process that leads the trainer's session, ignores the stop
signals sent to the group, waits for the trainer and writes its exit status to `exit_status` in
the run dir. An agent restarted while the trainer runs cannot wait for a process that is not its
child; it waits for the keeper to go and reads the file, so the job ends with its real exit
code rather than "lost" (DESIGN §5).

One run dir, one trainer, ever: before it forks the trainer a keeper claims the run dir by
creating `keeper.json` (its pid) with link(2), which fails when the file exists. A second keeper
for the same attempt (a start redelivered after the agent was killed mid-spawn, or a request
still queued in a dead agent's spawner) finds the claim and does not start the trainer; it
names the keeper that holds the run dir, which the agent then adopts. The exit status file is
made (padded) at the claim, so that writing the code at the end needs no new disk block: a full
disk does not cost the job its exit code.

Forking the agent itself for each keeper would copy the page tables of its whole heap (8 ms per
150 MB on these VMs, and again for the trainer). The spawner is a separate interpreter that
imports next to nothing: its forks take a fraction of a millisecond. The agent starts it once
and sends it one JSON request per line on its stdin; it answers each, once the keeper has
claimed the run dir (or found it claimed), with the keeper's pid on stdout. It exits when the
agent goes (stdin closes); the keepers live on, as trainers must.
This module runs inside the spawner: standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

EXIT_STATUS_FILE = "exit_status"
KEEPER_FILE = "keeper.json"
_STATUS_WIDTH = 24  # bytes reserved for the exit status: any Popen return code fits
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for `trainyard up` is not ours
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            reply = _fork_keeper(json.loads(line))
        except Exception as exc:  # a malformed request or a failed fork: say so, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def _fork_keeper(req: dict[str, object]) -> dict[str, object]:
    """Fork a keeper for `req`; its answer (claimed, or the run dir's holder) comes back through
    a pipe once it has looked at the run dir."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        code = 1
        try:
            code = _keep(req, write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        said = answer.read()
    if not said:
        return {"error": f"keeper {pid} exited before it claimed the run dir"}
    return {"pid": pid, **json.loads(said)}


def _keep(req: dict, answer_fd: int) -> int:
    os.setsid()
    os.chdir(req["run_dir"])  # how the agent knows this pid is still this run's keeper (tree.keeper_of)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the keeper must collect its trainer's status
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    run_dir = req["run_dir"]
    verdict = _claim(run_dir, req["stdout"], req["stderr"])
    os.write(answer_fd, json.dumps(verdict).encode())
    if "held_by" in verdict or "refused" in verdict:
        return 0
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)  # the spawner's pipes (the answer's too) are not the keeper's to hold
    status_fd = os.open(os.path.join(run_dir, EXIT_STATUS_FILE + ".tmp"), os.O_WRONLY)
    child = os.fork()
    if child == 0:
        _exec_trainer(req["argv"], req["cwd"], req["env"], req["stdout"], req["stderr"])
    while True:
        try:
            _, wait_status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    code = str(os.waitstatus_to_exitcode(wait_status)).encode()
    os.pwrite(status_fd, code.ljust(_STATUS_WIDTH), 0)  # in place: no new block on a full disk
    os.close(status_fd)
    with contextlib.suppress(OSError):  # the reader falls back to the .tmp file
        os.rename(os.path.join(run_dir, EXIT_STATUS_FILE + ".tmp"), os.path.join(run_dir, EXIT_STATUS_FILE))
    return 0


def _claim(run_dir: str, stdout: str, stderr: str) -> dict[str, object]:
    """Make this keeper the run dir's one keeper: {} when it is, {"held_by": pid} when another
    keeper claimed it first, {"refused": why} when it cannot run here."""
    record = os.path.join(run_dir, KEEPER_FILE)
    holder = read_keeper_pid(run_dir)
    if holder is not None:
        return {"held_by": holder}
    if any(os.path.exists(p) and os.path.getsize(p) > 0 for p in (stdout, stderr)):
        # Output with no keeper record: a start from before records existed, or files put there
        # by hand. Running again would append a second copy to them.
        return {"refused": f"run dir {run_dir} already holds output of an earlier start"}
    try:
        status_tmp = os.path.join(run_dir, EXIT_STATUS_FILE + ".tmp")
        with open(status_tmp, "wb") as status:
            status.write(b" " * _STATUS_WIDTH)  # reserved now; written in place at the end
        tmp = f"{record}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid()}, f)
        try:
            os.link(tmp, record)  # atomic, and fails if another keeper got there first
        except FileExistsError:
            return {"held_by": read_keeper_pid(run_dir)}
        finally:
            os.unlink(tmp)
    except OSError as exc:
        return {"refused": f"could not claim run dir {run_dir}: {exc}"}
    return {}


def read_keeper_pid(run_dir: str) -> int | None:
    """The pid in the run dir's keeper record, None if there is none."""
    try:
        with open(os.path.join(run_dir, KEEPER_FILE)) as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _exec_trainer(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    try:
        for sig in (*_STOP_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE; a trainer must not
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        os.dup2(os.open(stdout, flags, 0o644), 1)
        os.dup2(os.open(stderr, flags, 0o644), 2)
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, f"trainyard: could not start {argv[0]}: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    main()
