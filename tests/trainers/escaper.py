"""Starts a worker that leaves the trainer's session and ignores SIGTERM (as some launchers'
workers do), writes its pid to argv[1], prints a line and exits 0, leaving the worker behind."""
import os
import signal
import sys
import time

if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:  # a daemon: its parent exits, so it is nobody's child in the job's tree
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        while True:
            time.sleep(0.1)
    os._exit(0)
deadline = time.monotonic() + 10
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
print("worker left behind", flush=True)
