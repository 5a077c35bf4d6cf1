"""Reports progress once a second until stopped; exits 0 on SIGTERM after saying so."""
import json
import signal
import sys
import time


def on_term(*_):
    print("got SIGTERM, saving and exiting", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
for step in range(1, 100000):
    print("@trainyard " + json.dumps({"step": step, "total_steps": 1000}), flush=True)
    time.sleep(0.05)
