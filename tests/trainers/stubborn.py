"""Forks a child that ignores SIGTERM (like a wrapper's worker); writes both pids to argv[1].

The parent exits on SIGTERM; the child would survive a plain process-group SIGTERM.
"""
import os
import signal
import sys
import time

pid_file = sys.argv[1]
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.setsid()  # leaves the job's process group, as some launchers do
    while True:
        time.sleep(0.1)
with open(pid_file + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child}\n")
os.rename(pid_file + ".tmp", pid_file)
print("parent and child running", flush=True)
while True:
    time.sleep(0.1)
