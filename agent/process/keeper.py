"""Trainers' keepers, forked by a small helper process instead of by the agent.

A trainer runs under a *keeper*: a process that leads the trainer's session, ignores the stop
signals sent to the group, waits for the trainer and writes its exit status to `exit_status` in
the run dir. An agent restarted while the trainer runs cannot wait for a process that is not its
child; it waits for the keeper to go and reads the file, so the job ends with its real exit
code rather than "lost" (DESIGN §5).

Forking the agent itself for each keeper would copy the page tables of its whole heap (8 ms per
150 MB on these VMs, and again for the trainer). The spawner is a separate interpreter that
imports next to nothing: its forks take a fraction of a millisecond. The agent starts it once
and sends it one JSON request per line on its stdin; it answers each with the keeper's pid on
stdout. It exits when the agent goes (stdin closes); the keepers live on, as trainers must.
This module runs inside the spawner: standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import sys

EXIT_STATUS_FILE = "exit_status"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for `trainyard up` is not ours
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _keep(req["argv"], req["cwd"], req["env"], req["stdout"], req["stderr"], req["status"])
                finally:
                    os._exit(code)
            reply: dict[str, object] = {"pid": pid}
        except Exception as exc:  # a malformed request or a failed fork: say so, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


def _keep(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str, status: str) -> int:
    os.setsid()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the keeper must collect its trainer's status
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)  # the spawner's pipes are not the keeper's to hold
    child = os.fork()
    if child == 0:
        _exec_trainer(argv, cwd, env, stdout, stderr)
    while True:
        try:
            _, wait_status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    tmp = status + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, str(os.waitstatus_to_exitcode(wait_status)).encode())
    os.close(fd)
    os.rename(tmp, status)
    return 0


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
